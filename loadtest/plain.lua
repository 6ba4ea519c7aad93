-- Plain proxied GET: the baseline scenario.
-- wrk -t1 -c50 -d10s --latency -s loadtest/plain.lua http://127.0.0.1:18091
wrk.method = "GET"
wrk.path = "/api/v1/users/42"
