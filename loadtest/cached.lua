-- Cached product catalogue GETs (a small hot set, as product pages are).
-- wrk -t1 -c50 -d10s --latency -s loadtest/cached.lua http://127.0.0.1:18091
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/v1/products/" .. (counter % 20))
end
