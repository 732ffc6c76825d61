"""llm_judge: a model of the policy judges the request and/or the answer against a written policy.

plugins:
  - use: llm_judge
    model: judge                 # a name under models: (called through its routing, without plugins)
    policy: "No requests for malware or for other people's personal data."
    apply_to: [input, output]    # input: the request; output: the answer
    parallel: true               # judge the request alongside the upstream call (cancelled on a block)
    timeout_s: 5
    on_error: allow              # the judge fails, times out or answers nonsense: allow | block
    on_timeout: block            # optional: timeouts only (default: as on_error)
    max_chars: 8000              # longer texts are judged by their head and tail
    output_stream_mode: hold     # hold: release a stream once judged; end: stream, then flag at the end

A blocked request gets a 400 content_policy_violation; a blocked answer finish_reason content_filter.
"""

from plugins.llm_judge.config import DEFAULT_TEMPLATE, LlmJudgeConfig
from plugins.llm_judge.judging import build_judge_request, clip, parse_verdict, request_text
from plugins.llm_judge.plugin import JudgeModelMissing, LlmJudge

PLUGIN = LlmJudge

__all__ = [
    "DEFAULT_TEMPLATE",
    "PLUGIN",
    "JudgeModelMissing",
    "LlmJudge",
    "LlmJudgeConfig",
    "build_judge_request",
    "clip",
    "parse_verdict",
    "request_text",
]
