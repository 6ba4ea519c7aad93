-- JWT-authenticated GET. Mint a token first:
--   export JWT=$(python3 loadtest/mint_jwt.py --secret bench-secret --iss bench-app)
--   wrk -t1 -c50 -d10s --latency -s loadtest/jwt.lua http://127.0.0.1:18091
local token = os.getenv("JWT") or error("set JWT (see loadtest/mint_jwt.py)")
wrk.method = "GET"
wrk.path = "/api/v1/secure/1"
wrk.headers["Authorization"] = "Bearer " .. token
