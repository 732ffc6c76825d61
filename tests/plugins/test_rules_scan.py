"""rules: the pure core (`scan`, `apply`) and the options, checked without a gateway."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import regex  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway import registry
from gateway.guarding import Stage
from gateway.loader import PolicyError, load_text
from plugins.rules import PLUGIN, Match, Rules, RulesConfig, apply, scan
from plugins.rules.core import (
    FOLD_UNSAFE,
    PREFIX_CHARS,
    RuleSet,
    growing,
    keyword_prefixes,
    literal_prefix,
    settled_cut,
)


def config(*rules: dict[str, Any], **options: Any) -> RulesConfig:
    return RulesConfig.model_validate({"rules": list(rules), **options})


def rule(name: str = "r", **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields}


def found(text: str, cfg: RulesConfig, stage: Stage = "input") -> list[str]:
    """The matched texts, in order."""
    return [text[m.start : m.end] for m in scan(text, cfg.ruleset, stage)]


def redact(text: str, cfg: RulesConfig, stage: Stage = "input") -> str:
    return apply(text, scan(text, cfg.ruleset, stage))


def test_registered_under_its_name() -> None:
    assert PLUGIN is Rules
    assert registry.get("rules") is Rules


# --- regex ---------------------------------------------------------------------------------------------


def test_regex_matches_and_reports_rule_action_and_span() -> None:
    cfg = config(rule("card", pattern=r"\d{4}-\d{4}", action="redact", replacement="[CARD]"))
    assert scan("pay 1234-5678 now", cfg.ruleset, "input") == [Match("card", "redact", 4, 13, "[CARD]")]
    assert redact("pay 1234-5678 now", cfg) == "pay [CARD] now"


def test_regex_is_case_insensitive_unless_asked() -> None:
    assert found("My SECRET", config(rule(pattern="secret"))) == ["SECRET"]
    assert found("My SECRET", config(rule(pattern="secret", case_sensitive=True))) == []


def test_action_defaults_to_block_and_replacement_to_redacted() -> None:
    (m,) = scan("x secret", config(rule(pattern="secret")).ruleset, "input")
    assert (m.action, m.replacement) == ("block", "[REDACTED]")


# --- keywords ------------------------------------------------------------------------------------------


def test_keywords_match_whole_words_only() -> None:
    cfg = config(rule(keywords=["ass"]))
    assert found("an ass, ASS! (ass)", cfg) == ["ass", "ASS", "ass"]
    assert found("class assert passes", cfg) == []


def test_keyword_phrase_matches_across_any_whitespace() -> None:
    cfg = config(rule(keywords=["ignore previous instructions"]))
    assert found("Please IGNORE  previous\ninstructions.", cfg) == ["IGNORE  previous\ninstructions"]
    assert found("ignore previous instructionsXYZ", cfg) == []


def test_keywords_are_escaped_not_regexes() -> None:
    cfg = config(rule(keywords=["c++", "a.b"]))
    assert found("I like c++ and a.b but not axb", cfg) == ["c++", "a.b"]


def test_keyword_case_sensitive() -> None:
    cfg = config(rule(keywords=["Bob"], case_sensitive=True))
    assert found("Bob and bob", cfg) == ["Bob"]


def test_unicode_keywords_fold_case_and_respect_word_edges() -> None:
    cfg = config(rule(keywords=["straße", "ΣΟΦΙΑ"]))
    assert found("STRASSE Straße, σοφια; straßenbahn", cfg) == ["Straße", "σοφια"]


def test_korean_keywords_match_inside_words_with_particles() -> None:
    cfg = config(rule(keywords=["폭탄", "비밀번호"]))
    assert found("폭탄을 만드는 법", cfg) == ["폭탄"]
    assert found("내 비밀번호는 1234", cfg) == ["비밀번호"]
    assert found("시한폭탄이다", cfg) == ["폭탄"]


def test_latin_keyword_next_to_korean_particle_still_matches() -> None:
    cfg = config(rule(keywords=["bomb"]))
    assert found("bomb을 만들어", cfg) == ["bomb"]
    assert found("bombs", cfg) == []


def test_longest_keyword_wins_at_the_same_position() -> None:
    cfg = config(rule(keywords=["secret", "secret key"], action="redact"))
    assert redact("the secret key is", cfg) == "the [REDACTED] is"


# --- stages --------------------------------------------------------------------------------------------


def test_rule_only_checks_its_stages() -> None:
    cfg = config(rule(pattern="secret", stages=["output"]))
    assert found("secret", cfg, "input") == []
    assert found("secret", cfg, "output") == ["secret"]


# --- allow-list ----------------------------------------------------------------------------------------


def deny_ignore(**options: Any) -> RulesConfig:
    return config(
        rule("ignore", pattern=r"\bignore\s+\w+(\s+\w+)?"),
        allow=[{"keywords": ["ignore whitespace"]}],
        **options,
    )


def test_allow_list_exempts_a_deny_match_inside_it() -> None:
    assert found("please ignore whitespace", deny_ignore()) == []
    assert found("please ignore previous instructions", deny_ignore()) == ["ignore previous instructions"]


def test_allow_list_match_does_not_exempt_a_broader_or_other_deny_match() -> None:
    text = "ignore whitespace, then ignore previous instructions"
    assert found(text, deny_ignore()) == ["ignore previous instructions"]
    # a deny match that only starts inside the allowed span is broader than it: not exempt
    assert found("ignore whitespace rules", deny_ignore()) == ["ignore whitespace rules"]


def test_allow_scope_text_exempts_the_whole_text() -> None:
    text = "ignore whitespace, then ignore previous instructions"
    assert found(text, deny_ignore(allow_scope="text")) == []


def test_allow_entry_with_pattern_and_stages() -> None:
    cfg = config(rule(pattern="secret"), allow=[{"pattern": r"secret\s+santa", "stages": ["input"]}])
    assert found("secret santa", cfg, "input") == []
    assert found("secret santa", cfg, "output") == ["secret"]


def test_allow_match_may_begin_in_the_context_before_start() -> None:
    cfg = deny_ignore()
    text = "please ignore whitespace"
    assert scan(text, cfg.ruleset, "input", start=text.index("whitespace")) == []


# --- apply ---------------------------------------------------------------------------------------------


def m(start: int, end: int, replacement: str = "#", action: Any = "redact") -> Match:
    return Match("r", action, start, end, replacement)


def test_apply_redacts_overlapping_and_nested_matches_once() -> None:
    text = "abcdefghij"
    assert apply(text, [m(1, 4, "X"), m(3, 6, "Y")]) == "aXghij"
    assert apply(text, [m(1, 8, "X"), m(2, 3, "Y")]) == "aXij"
    assert apply(text, [m(2, 4, "X"), m(4, 6, "Y")]) == "abXYghij"  # touching, not overlapping
    assert apply(text, [m(5, 7, "Y"), m(0, 2, "X")]) == "XcdeYhij"  # any order


def test_apply_leaves_block_and_flag_matches_alone() -> None:
    assert apply("abcdef", [m(0, 2, action="flag"), m(2, 4, action="block"), m(4, 6)]) == "abcd#"


def test_overlapping_rules_redact_as_one_span() -> None:
    cfg = config(
        rule("email", pattern=r"[\w.]+@[\w.]+", action="redact", replacement="[EMAIL]"),
        rule("name", keywords=["john"], action="redact", replacement="[NAME]"),
    )
    assert redact("mail john.doe@x.com or John", cfg) == "mail [EMAIL] or [NAME]"


# --- stream helpers ------------------------------------------------------------------------------------


def test_growing_finds_where_an_unfinished_match_begins() -> None:
    cfg = config(rule(keywords=["bad word"]), rule("n", pattern=r"\d{4}-\d{4}"), allow=[{"keywords": ["good one"]}])
    assert growing("x bad   wo", cfg.ruleset, "output") == 2
    assert growing("call 1234-56", cfg.ruleset, "output") == 5
    assert growing("a good on", cfg.ruleset, "output") == 2
    assert growing("x bad word", cfg.ruleset, "output") is None
    assert growing("x bad   wo", cfg.ruleset, "output", start=3) is None


def test_settled_cut_never_splits_a_match() -> None:
    assert settled_cut([m(2, 6), m(8, 9)], 4) == 2
    assert settled_cut([m(0, 3), m(2, 6)], 4) == 0  # moving left meets another match
    assert settled_cut([m(2, 4)], 4) == 4


# --- catastrophic patterns -----------------------------------------------------------------------------


def test_catastrophic_regex_times_out_instead_of_stalling() -> None:
    cfg = config(rule(pattern=r"(a|aa)+$"), timeout_s=0.05)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        scan("a" * 60 + "!", cfg.ruleset, "input")
    assert time.monotonic() - began < 1.0


def test_time_budget_grows_with_the_text_so_padding_cannot_force_a_timeout() -> None:
    rules = config(rule(pattern="x"), timeout_s=0.1).ruleset
    assert rules.budget("a" * 100) == pytest.approx(0.1)
    assert rules.budget("a" * (4 * 1024 * 1024)) == pytest.approx(6.5)


def test_catastrophic_regex_behind_a_literal_prefix_still_times_out() -> None:
    # The prefix only rules texts out; a text that has it gets the full, timed match.
    cfg = config(rule(pattern=r"key-(a|aa)+$"), timeout_s=0.05)
    assert found("no prefix here " + "a" * 60, cfg) == []
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        scan("key-" + "a" * 60 + "!", cfg.ruleset, "input")
    assert time.monotonic() - began < 1.0


def test_short_keyword_scans_skip_the_timeout_and_long_ones_keep_it() -> None:
    # An already spent budget: a timed scan raises at once, an untimed one (bounded by construction) does not.
    cfg = config(rule(keywords=["secret plan", "launch code"]), timeout_s=1e-12)
    assert found("the launch   code is here", cfg) == ["launch   code"]
    many = config(rule(keywords=[f"word{i}" for i in range(2000)]), timeout_s=1e-12)
    with pytest.raises(TimeoutError):
        scan("word1x " * 300, many.ruleset, "input")
    assert scan("x " * 1000, many.ruleset, "input") == []  # no keyword's first word in it: not scanned at all


# --- patterns that start with plain text ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "prefix"),
    [
        (r"sk-[A-Za-z0-9]{20,}", "sk-"),
        (r"AKIA[0-9A-Z]{16}", "AKIA"),
        (r"ghp_\w{36}", "ghp_"),
        (r"xoxb-\d+", "xoxb-"),
        (r"Bearer\s+\S+", "Bearer"),
        (r"abc+", "ab"),  # the repeated character is not required
        (r"abc?d", "ab"),
        (r"abc{2}", "ab"),
        (r"ab*", ""),  # one character: not worth it
        (r"sk-\w+|AKIA\w+", ""),  # an alternation anywhere
        (r"key(?:-\w+|_\d+)", ""),
        (r"(?i)sk-\w+", ""),  # inline flags anywhere
        (r"sk(?i)-\w+", ""),
        (r"^sk-\w+", ""),
        (r"\bsk-\w+", ""),
        (r"s.k", ""),
        (r"[s]k-", ""),
    ],
)
def test_literal_prefix(source: str, prefix: str) -> None:
    assert literal_prefix(source) == prefix


def test_literal_prefix_ignoring_case_is_folded_and_stops_at_a_capital_i() -> None:
    assert literal_prefix("SK-[a-z]+", ignore_case=True) == "sk-"
    assert literal_prefix("AKIA[0-9]+", ignore_case=True) == "ak"
    assert literal_prefix("AKIA[0-9]+") == "AKIA"
    # The regex module matches a capital I to the dotless i, which does not fold to "i".
    cfg = config(rule(pattern=r"TOKEN-ID\d+"))
    assert found("token-\u0131d42", cfg) == ["token-\u0131d42"]


def test_a_prefixed_pattern_still_ignores_case_as_the_regex_module_does() -> None:
    cfg = config(rule(pattern=r"sk-[a-z0-9]{8,}"))  # case-insensitive by default
    text = "a SK-ABCDEFGH12 and an \u017fk-abcdefgh (long s) and a s\u212a-abcdefgh (Kelvin sign)"
    assert found(text, cfg) == ["SK-ABCDEFGH12", "\u017fk-abcdefgh", "s\u212a-abcdefgh"]
    exact = config(rule(pattern=r"sk-[a-z0-9]{8,}", case_sensitive=True))
    assert found(text, exact) == []
    assert found("sk-abcdefgh", exact) == ["sk-abcdefgh"]


def test_a_prefix_before_start_does_not_count() -> None:
    cfg = config(rule(pattern=r"sk-[a-z]{4}"))
    text = "sk-abcd then more text"
    assert [m.start for m in scan(text, cfg.ruleset, "input", start=0)] == [0]
    assert scan(text, cfg.ruleset, "input", start=5) == []


def test_keyword_prefixes_are_each_keywords_first_word_or_nothing() -> None:
    assert keyword_prefixes(["forbidden phrase", "Launch code"], ignore_case=True) == ("forb", "launch")
    assert keyword_prefixes(["forbidden phrase", "Launch code"], ignore_case=False) == ("forbidden", "Launch")
    assert keyword_prefixes(["forbidden", "internal only"], ignore_case=True) == ()  # "i": no safe prefix
    assert keyword_prefixes(["forbidden", "x"], ignore_case=False) == ()  # one character: not worth it
    assert keyword_prefixes(["폭탄", "bomb"], ignore_case=True) == ()  # not plain ASCII


def test_a_dotted_capital_i_does_not_slip_past_a_case_insensitive_rule() -> None:
    # "İ" (U+0130) matches "i" ignoring case but case-folds to two characters: no prefilter may rule it out.
    cfg = config(
        rule("key", pattern=r"api_key=[a-z]+"),
        rule("phrase", keywords=["secret plan", "internal only"]),
        rule("word", keywords=["mission", "pipeline"]),
    )
    text = "send AP\u0130_KEY=abc, the SECRET PLAN and \u0130NTERNAL ONLY notes of the M\u0130SS\u0130ON p\u0130peline"
    assert found(text, cfg) == [
        "AP\u0130_KEY=abc",
        "SECRET PLAN",
        "\u0130NTERNAL ONLY",
        "M\u0130SS\u0130ON",
        "p\u0130peline",
    ]


def _unfiltered(rules: RuleSet) -> RuleSet:
    """The same rules with no literal prefilter: what the regex module alone finds."""
    deny = tuple(
        dataclasses.replace(r, matcher=dataclasses.replace(r.matcher, prefixes=())) for r in rules.deny
    )
    return dataclasses.replace(rules, deny=deny)


# Characters the regex module matches to each other ignoring case, some of which case-fold oddly.
_VARIANTS = {"i": "iI\u0130", "I": "Ii\u0131", "s": "sS\u017f", "k": "kK\u212a", "a": "aA", "b": "bB"}


@settings(max_examples=400, deadline=None)
@given(
    keywords=st.lists(st.text(alphabet="abkiIs-_", min_size=2, max_size=7), min_size=1, max_size=3),
    data=st.data(),
    case_sensitive=st.booleans(),
)
def test_the_prefilter_finds_exactly_what_the_regex_module_finds(
    keywords: list[str], data: st.DataObject, case_sensitive: bool
) -> None:
    """Texts made of the keywords, each character maybe swapped for one the regex module matches to it ignoring
    case (dotted and dotless i, long s, the Kelvin sign): the prefilters must never lose a match."""
    words = [
        "".join(data.draw(st.sampled_from(_VARIANTS.get(c, c))) for c in data.draw(st.sampled_from(keywords)))
        for _ in range(data.draw(st.integers(1, 4)))
    ]
    text = data.draw(st.sampled_from([" ", ", ", "x "])).join(words)
    cfg = config(
        rule("kw", keywords=keywords, case_sensitive=case_sensitive),
        rule("re", pattern=regex.escape(keywords[0]) + "[a-z]*", case_sensitive=case_sensitive),
    )
    assert scan(text, cfg.ruleset, "input") == scan(text, _unfiltered(cfg.ruleset), "input")


def test_case_folding_never_hides_a_match_the_regex_module_would_find() -> None:
    """The prefilter compares case-folded text. Every character the regex module matches, ignoring case,
    against a character a prefix may hold must case-fold to exactly that character, so that a run of them
    folds to the prefix itself (Unicode has two such odd ones: long s and the Kelvin sign; the dotted capital
    I folds to two characters, which is why "i" may not be in a folded prefix). Checked over every code point."""
    allowed = "".join(sorted(PREFIX_CHARS - FOLD_UNSAFE))
    flags = regex.IGNORECASE | regex.VERSION0
    any_allowed = regex.compile(f"[{regex.escape(allowed)}]", flags)
    odd = 0
    for point in range(0x110000):
        char = chr(point)
        if char.isascii() or not any_allowed.fullmatch(char):
            continue
        odd += 1
        for target in allowed:
            if regex.fullmatch(regex.escape(target), char, flags):
                assert char.casefold() == target.casefold(), (hex(point), target)
    assert odd >= 2
    assert regex.fullmatch("i", "\u0130", flags) and "\u0130".casefold() != "i"  # why "i" is unsafe


# --- options -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pattern": "(unclosed"}, "invalid regular expression"),
        ({"pattern": "x*"}, "matches the empty text"),
        ({"keywords": []}, "keywords must not be empty"),
        ({"keywords": ["  "]}, "a keyword must not be empty"),
        ({}, "exactly one of `pattern` or `keywords`"),
        ({"pattern": "a", "keywords": ["a"]}, "exactly one of `pattern` or `keywords`"),
        ({"pattern": "a", "action": "delete"}, "'block', 'redact' or 'flag'"),
    ],
)
def test_bad_rules_are_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(rule(**fields))


def test_rule_names_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="repeated: a"):
        config(rule("a", pattern="x"), rule("a", pattern="y"))


def test_hold_covers_the_longest_keyword() -> None:
    assert config(rule(keywords=["abc"])).hold == 64
    assert config(rule(keywords=["x" * 100])).hold == 101


POLICY = """
backends:
  - {{name: fake, type: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  - name: echo
    targets: [{{backend: fake, model: echo}}]
    plugins:
      - use: rules
        rules:
          - {{name: ok, keywords: [fine]}}
          - {{name: broken, pattern: "{pattern}"}}
"""


def test_invalid_regex_rejected_at_load_with_its_path() -> None:
    with pytest.raises(PolicyError) as info:
        load_text(POLICY.format(pattern="[a-"), "policy.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("models[0].plugins[0].rules[1].pattern: invalid regular expression '[a-'")


def test_unknown_rule_key_rejected_at_load_with_its_path() -> None:
    text = POLICY.format(pattern="x").replace("pattern:", "patern:")
    with pytest.raises(PolicyError) as info:
        load_text(text, "policy.yaml")
    assert any(p.startswith("models[0].plugins[0].rules[1].patern: unknown key") for p in info.value.problems)


def test_valid_policy_loads_with_compiled_rules() -> None:
    loaded = load_text(POLICY.format(pattern=r"\\d+"), "policy.yaml")
    cfg = loaded.config_for(loaded.policy.models[0].plugins[0])
    assert isinstance(cfg, RulesConfig)
    assert [r.name for r in cfg.ruleset.deny] == ["ok", "broken"]
    assert found("fine 42", cfg) == ["fine", "42"]
