-- Cached product catalogue GETs, a small hot set as product pages are (route "products" of
-- loadtest/gatehouse.yaml, with proxy-cache).
--   wrk -t1 -c50 -d10s --latency -s loadtest/cached.lua http://127.0.0.1:18091
-- Exits 1 when any answer is not 2xx (loadtest/check.lua).
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require("check").install()

local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/v1/products/" .. (counter % 20))
end
