-- Every request carries a different x-user-id, as sticky routing sees in production: a cycle of
-- 1000 keys, formatted once so wrk spends little CPU. All variants send the same requests.
local requests = {}
local n = 0

init = function()
  for i = 1, 1000 do
    requests[i] = wrk.format("GET", "/predict", {["x-user-id"] = "user-" .. i})
  end
end

request = function()
  n = n % #requests + 1
  return requests[n]
end
