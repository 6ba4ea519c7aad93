-- Plain proxied GET: the baseline scenario (route "users" of loadtest/gatehouse.yaml).
--   wrk -t1 -c50 -d10s --latency -s loadtest/plain.lua http://127.0.0.1:18091
-- Exits 1 with a FAIL line when any answer is not 2xx (loadtest/check.lua).
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require("check").install()

wrk.method = "GET"
wrk.path = "/api/v1/users/42"
