"""guardrails_ai: guardrails-ai validators on requests and answers (streams included), in a worker process.

guardrails-ai cannot share the gateway's environment (it pins older openai and huggingface_hub), so it
lives in `.venv-guardrails` (`make guardrails-venv`) and runs in a child process the plugin starts and
talks to over stdin/stdout. Its remote telemetry is off and the worker refuses outbound connections.

plugins:
  - use: guardrails_ai
    modules: [my_validators]        # imported by the worker: their @register_validator names become usable
    paths: [./validators]           # put first on the worker's sys.path
    validators:
      - use: gateway/competitor_check             # shipped example (worker/gateway_validators.py)
        args: {competitors: [Acme, Globex]}
        on_fail: fix                              # exception|refrain|filter|reask -> block, fix -> redact, noop -> flag
        stages: [output]
      - use: gateway/deny_pattern
        args: {pattern: '\\b(?:darn|heck)\\b'}
        on_fail: exception
    on_error: allow                 # the worker is down, slow (timeout_s) or a validator raised
"""

from plugins.guardrails_ai.config import GuardrailsAiConfig, ValidatorSpec
from plugins.guardrails_ai.core import ON_FAIL_ACTION, Outcome, Report, decide, segment_end
from plugins.guardrails_ai.plugin import GuardrailsAi

PLUGIN = GuardrailsAi

__all__ = [
    "ON_FAIL_ACTION",
    "PLUGIN",
    "GuardrailsAi",
    "GuardrailsAiConfig",
    "Outcome",
    "Report",
    "ValidatorSpec",
    "decide",
    "segment_end",
]
