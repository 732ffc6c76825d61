"""rules: regex and keyword deny rules with an allow-list, on requests and answers (streams included).

plugins:
  - use: rules
    rules:
      - name: prompt-injection
        keywords: ["ignore previous instructions", "이전 지시를 무시"]
        action: block                # block | redact | flag
      - name: card-number
        pattern: '\\b(?:\\d[ -]?){13,16}\\b'
        action: redact
        replacement: "[CARD]"
        stages: [output]             # input, output or both (default)
    allow:
      - keywords: ["ignore whitespace"]
    allow_scope: match               # or text: an allow-list match exempts its whole message/answer
    hold_chars: 64                   # streamed text held back to see matches split across chunks
"""

from plugins.rules.config import AllowEntry, ContentRule, RulesConfig
from plugins.rules.core import Match, RuleSet, apply, scan
from plugins.rules.plugin import Rules

PLUGIN = Rules

__all__ = ["PLUGIN", "AllowEntry", "ContentRule", "Match", "RuleSet", "Rules", "RulesConfig", "apply", "scan"]
