-- A chat request with a unique prompt each time, so no cache can answer it.
counter = 0
request = function()
  counter = counter + 1
  local body = '{"model":"bench","messages":[{"role":"user","content":"unique prompt ' ..
      counter .. ' ' .. math.random(1, 1000000000) .. '"}],"max_tokens":16}'
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json"}, body)
end
