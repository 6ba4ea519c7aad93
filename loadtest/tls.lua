-- Proxied GET to an HTTPS origin, certificate verified by the proxy (route "tls-users" of the
-- config compare.sh derives from loadtest/gatehouse.yaml; nginx proxy_ssl_verify, HAProxy
-- `ssl verify required`).
-- Exits 1 with a FAIL line when any answer is not 2xx (loadtest/check.lua).
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require("check").install()

wrk.method = "GET"
wrk.path = "/api/v1/tls/42"
