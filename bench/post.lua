-- A chat request with a unique prompt each time, so no cache can answer it. wrk does not seed Lua's
-- random numbers: without this every run would send the same prompts, and a later run would hit caches
-- (the embedder's per-text vector cache included) that an earlier run or the warm-up filled.
math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 1000003)  -- differs per wrk thread
counter = 0
request = function()
  counter = counter + 1
  local body = '{"model":"bench","messages":[{"role":"user","content":"unique prompt ' ..
      counter .. ' ' .. math.random(1, 1000000000) .. '"}],"max_tokens":16}'
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json"}, body)
end
