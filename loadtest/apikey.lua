-- Gateway chain: API key + rate limit + header rewrites on the route.
-- API_KEY=bench-key wrk -t1 -c50 -d10s --latency -s loadtest/apikey.lua http://127.0.0.1:18091
local key = os.getenv("API_KEY") or "bench-key-0001"
wrk.method = "GET"
wrk.path = "/api/v1/orders/7"
wrk.headers["X-API-Key"] = key
