-- Mixed read/write traffic across routes: 70% GET users, 20% GET products, 10% POST orders.
-- wrk -t1 -c50 -d10s --latency -s loadtest/mixed.lua http://127.0.0.1:18091
local counter = 0
local body = '{"sku":"KB-001","qty":1}'
request = function()
  counter = counter + 1
  local n = counter % 10
  if n < 7 then
    return wrk.format("GET", "/api/v1/users/" .. (counter % 100))
  elseif n < 9 then
    return wrk.format("GET", "/api/v1/products/" .. (counter % 50))
  else
    return wrk.format("POST", "/api/v1/orders", { ["Content-Type"] = "application/json" }, body)
  end
end
