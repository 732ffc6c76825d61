-- The same chat request every time: after the first, a cache answers it.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"How do I reset my password?"}],"max_tokens":16}'
