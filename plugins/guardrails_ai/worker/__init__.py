"""The guardrails-ai worker: runs in its own virtual environment (`make guardrails-venv`), never imported here.

`serve.py` is started as a script by `plugins.guardrails_ai.client.WorkerClient`; `gateway_validators.py`
holds the example validators it always registers. Neither module is importable in the gateway's environment
(guardrails-ai is not installed there), which is why they import it dynamically or under `type: ignore`.
"""
