-- JWT-authenticated GET (route "secure" of loadtest/gatehouse.yaml). Mint a token first:
--   export JWT=$(python3 loadtest/mint_jwt.py)
--   wrk -t1 -c50 -d10s --latency -s loadtest/jwt.lua http://127.0.0.1:18091
-- Exits 1 when any answer is not 2xx (loadtest/check.lua).
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require("check").install()

local token = os.getenv("JWT") or error("set JWT: export JWT=$(python3 loadtest/mint_jwt.py)")
wrk.method = "GET"
wrk.path = "/api/v1/secure/1"
wrk.headers["Authorization"] = "Bearer " .. token
