-- Every request carries a different x-user-id (a cycle of 100000 keys), as sticky routing sees
-- in production. All variants send it, so they all parse the same requests.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/predict", {["x-user-id"] = "user-" .. (n % 100000)})
end
