"""The request log: one record per request, written off the request path; feedback on those records.

    record.py        the record built from the context (ids, timings, tokens, cost, cache, guard, content)
    writer.py        `RequestLog`: bounded queue -> background batches -> store; retention; drop counter
    store*.py        SQLite (default) and PostgreSQL, same tables
    feedback.py      POST /v1/feedback
    cli.py           `gateway logs`

Nothing is imported here: `gateway.policy` imports `gateway.requestlog.config`, which must stay light.
"""
