-- Gateway chain: API key + rate limit + header rewrites (route "orders" of
-- loadtest/gatehouse.yaml, whose consumer "bench" has the key bench-key-0001).
--   wrk -t1 -c50 -d10s --latency -s loadtest/apikey.lua http://127.0.0.1:18091
-- API_KEY=... selects another key. Exits 1 when any answer is not 2xx (loadtest/check.lua).
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require("check").install()

wrk.method = "GET"
wrk.path = "/api/v1/orders/7"
wrk.headers["X-API-Key"] = os.getenv("API_KEY") or "bench-key-0001"
