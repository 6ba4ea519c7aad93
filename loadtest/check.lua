-- Shared by the wrk scripts: every answer must be 2xx. Counts the others in each thread and,
-- at the end of the run, prints FAIL and exits with status 1 when any answer was not 2xx or
-- any socket error (connect, read, write, timeout) happened; prints OK otherwise.
--
-- A script loads it with the two lines at its top (wrk runs each thread in a Lua state of
-- its own, so the module is loaded once per thread):
--   package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
--   require("check").install()
local M = {}

function M.install()
  local threads = {}

  setup = function(thread)
    table.insert(threads, thread)
  end

  init = function(args)
    non2xx = 0
    first_non2xx = nil
  end

  response = function(status, headers, body)
    if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_non2xx == nil then
        first_non2xx = status
      end
    end
  end

  done = function(summary, latency, requests)
    local bad, first = 0, nil
    for _, t in ipairs(threads) do
      bad = bad + (t:get("non2xx") or 0)
      first = first or t:get("first_non2xx")
    end
    local e = summary.errors
    local sock = e.connect + e.read + e.write + e.timeout
    if bad > 0 or sock > 0 or summary.requests == 0 then
      io.write(string.format(
        "FAIL: %d of %d responses not 2xx (first status: %s); socket errors: connect %d, read %d, write %d, timeout %d\n",
        bad, summary.requests, tostring(first), e.connect, e.read, e.write, e.timeout))
      io.flush()
      os.exit(1)
    end
    io.write(string.format("OK: %d responses, all 2xx, no socket errors\n", summary.requests))
  end
end

return M
