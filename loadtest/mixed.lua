-- Mixed read/write traffic across the routes of loadtest/gatehouse.yaml: 70% GET users,
-- 20% GET products (cached), 10% POST orders (with the API key the route requires).
--   wrk -t1 -c50 -d10s --latency -s loadtest/mixed.lua http://127.0.0.1:18091
-- Exits 1 when any answer is not 2xx (loadtest/check.lua).
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require("check").install()

local counter = 0
local body = '{"sku":"KB-001","qty":1}'
local post_headers = {
  ["Content-Type"] = "application/json",
  ["X-API-Key"] = os.getenv("API_KEY") or "bench-key-0001",
}
request = function()
  counter = counter + 1
  local n = counter % 10
  if n < 7 then
    return wrk.format("GET", "/api/v1/users/" .. (counter % 100))
  elseif n < 9 then
    return wrk.format("GET", "/api/v1/products/" .. (counter % 50))
  else
    return wrk.format("POST", "/api/v1/orders", post_headers, body)
  end
end
