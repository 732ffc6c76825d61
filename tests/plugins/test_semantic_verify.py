"""verify(): the semantic cache's check that a vector-search hit really asks the same question."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from bench import semantic_precision as bench
from plugins.semantic_cache import verify as verifier
from plugins.semantic_cache.verify import Strictness, Verdict, verify

STRICTNESSES: tuple[Strictness, ...] = ("off", "balanced", "strict")

# (a, b, reason): both "balanced" and "strict" must refuse with this reason; "off" must accept.
DIFFERENT = [
    # numbers: digits, versions, percentages, ordinals, number words, Korean counters and multipliers
    ("How do I install Node 18 on Debian?", "How do I install Node 20 on Debian?", "numbers differ"),
    ("Is pandas 2.1 compatible with NumPy 2?", "Is pandas 2.2 compatible with NumPy 2?", "numbers differ"),
    ("What is 15% of 240?", "What is 15% of 420?", "numbers differ"),
    ("Give me five icebreaker questions", "Give me ten icebreaker questions", "numbers differ"),
    ("Who was the 3rd president of France?", "Who was the fourth president of France?", "numbers differ"),
    ("귤 두 개의 칼로리", "귤 세 개의 칼로리", "numbers differ"),
    ("10만원 이하 이어폰 추천", "20만원 이하 이어폰 추천", "numbers differ"),
    # negation
    ("Which plans include SSO?", "Which plans don't include SSO?", "negation differs"),
    ("Is parking allowed near the venue?", "Is parking forbidden near the venue?", "negation differs"),
    ("How do I cook rice with a lid?", "How do I cook rice without a lid?", "negation differs"),
    ("카드 결제가 가능한가요?", "카드 결제가 불가능한가요?", "negation differs"),
    ("이 앱에 광고가 있나요?", "이 앱에 광고가 없나요?", "negation differs"),
    ("주말에도 택배가 오나요?", "주말에도 택배가 안 오나요?", "negation differs"),
    # dates and times
    ("What's on TV tonight?", "What's on TV tomorrow?", "date differs"),
    ("Is the pharmacy open on Monday?", "Is the pharmacy open on Tuesday?", "date differs"),
    ("Set an alarm for 6am", "Set an alarm for 6pm", "date differs"),
    ("What were our sales last quarter?", "What were our sales this quarter?", "date differs"),
    ("내일 부산 날씨 알려줘", "모레 부산 날씨 알려줘", "date differs"),
    ("다음 달 일정 정리해줘", "이번 달 일정 정리해줘", "date differs"),
    # named entities and quoted strings
    ("How do I deploy a Next.js app to Heroku?", "How do I deploy a Next.js app to Vercel?", "entity differs"),
    ("Is EC2 cheaper than Lambda for cron jobs?", "Is EC2 cheaper than Fargate for cron jobs?", "entity differs"),
    ("Why does useMemo run twice?", "Why does useCallback run twice?", "entity differs"),
    ("AWS 요금제 비교해줘", "GCP 요금제 비교해줘", "entity differs"),
    ('What does "git reset --hard" do?', 'What does "git reset --soft" do?', "quoted text differs"),
    # antonyms and directions
    ("How do I increase the JVM heap size?", "How do I decrease the JVM heap size?", "antonym"),
    ("How to enable cookies in Safari", "How to disable cookies in Safari", "antonym"),
    ("How do I turn on Bluetooth on my laptop?", "How do I turn off Bluetooth on my laptop?", "antonym"),
    ("How do I lock the screen?", "How do I unlock the screen?", "antonym"),
    ("Should I stretch before swimming?", "Should I stretch after swimming?", "antonym"),
    ("볼륨을 키우는 법", "볼륨을 줄이는 법", "antonym"),
    ("블루투스 켜는 법", "블루투스 끄는 법", "antonym"),
    ("식사 전에 먹는 약", "식사 후에 먹는 약", "antonym"),
    ("Is red wine bad for your heart?", "Is red wine good for your heart?", "antonym"),
    # units and currencies
    ("How long does it take to walk 10 km?", "How long does it take to walk 10 miles?", "unit differs"),
    ("Convert 20 USD to KRW", "Convert 20 EUR to KRW", "unit differs"),
    ("Bake at 180°C for how long?", "Bake at 180°F for how long?", "unit differs"),
    ("How much is $100 in euros?", "How much is €100 in dollars?", "unit differs"),
    ("2킬로그램은 몇 파운드인가요?", "2파운드는 몇 킬로그램인가요?", "unit differs"),
    # order
    ("How do I translate French to German?", "How do I translate German to French?", "order differs"),
    ("원화를 엔화로 바꾸는 법", "엔화를 원화로 바꾸는 법", "order differs"),
    # one content word swapped in an otherwise identical sentence
    ("How do I clean my keyboard?", "How do I clean my monitor?", "content words differ"),
    ("What's a good gift for a coworker?", "What's a good gift for a neighbor?", "content words differ"),
    ("고양이 사료 추천해줘", "강아지 사료 추천해줘", "content words differ"),
    ("구글 시트에서 행 삭제하는 법", "구글 시트에서 열 삭제하는 법", "content words differ"),
]

# Pairs that ask the same thing: "balanced" and "strict" must accept them.
SAME = [
    ("Convert 1,000 to hex", "Convert 1000 to hex"),
    ("Give me five examples of irony", "Give me 5 examples of irony"),
    ("What is the third planet from the sun?", "What's the 3rd planet from the sun?"),
    ("What is twenty-five percent of 80?", "What is 25% of 80?"),
    ("Which one is faster, Redis or Memcached?", "Which is faster, Redis or Memcached?"),
    ("5만원 이하 선물 추천", "50,000원 이하 선물 추천"),
    ("사과 두 개 칼로리", "사과 2개 칼로리"),
    ("Why can't I log in?", "Why cannot I log in?"),
    ("My app won't start", "My app will not start"),
    ("로그인이 안 돼요", "로그인이 안돼요"),
    ("Book a table for 7 p.m.", "Book a table for 7pm"),
    ("오늘 서울 날씨", "서울 오늘 날씨는?"),
    ("How do I install Docker on Ubuntu?", "how do i install docker on ubuntu"),
    ("Is JS single-threaded?", "Is JavaScript single-threaded?"),
    ("How do I turn on dark mode?", "How do I enable dark mode?"),
    ("How many miles is 5 km?", "How many miles is 5 kilometers?"),
    ("Is 30°C hot?", "Is 30 °C hot?"),
    ("100달러는 몇 원인가요?", "100 달러는 몇 원인가요?"),
    ("How do I delete my account?", "How do I remove my account?"),
    ("How do I fix this error?", "How do I solve this error?"),
    ("How do I undo my last commit?", "How do I undo my most recent commit?"),
]


@pytest.mark.parametrize(("a", "b", "reason"), DIFFERENT)
def test_refuses_near_misses(a: str, b: str, reason: str) -> None:
    for strictness in ("balanced", "strict"):
        assert verify(a, b, strictness) == Verdict(False, reason), strictness
        assert not verify(b, a, strictness).ok


@pytest.mark.parametrize(("a", "b"), SAME)
def test_accepts_same_questions(a: str, b: str) -> None:
    for strictness in ("balanced", "strict"):
        assert verify(a, b, strictness) == Verdict(True, ""), strictness
        assert verify(b, a, strictness).ok


@pytest.mark.parametrize(("a", "b"), [(a, b) for a, b, _ in DIFFERENT] + SAME)
def test_off_accepts_everything(a: str, b: str) -> None:
    assert verify(a, b, "off") == Verdict(True, "")


def test_default_strictness_is_balanced() -> None:
    a, b = "How do I clear the cache in Chrome?", "How do I clear the cache in Google Chrome?"
    assert verify(a, b) == verify(a, b, "balanced") == Verdict(True, "")


def test_strict_wants_every_entity_and_few_new_content_words() -> None:
    # balanced refuses only an entity swap; strict refuses any entity missing from the other text
    a, b = "How do I clear the cache in Chrome?", "How do I clear the cache in Google Chrome?"
    assert verify(a, b, "strict") == Verdict(False, "entity differs")
    a, b = "How do I clean my keyboard?", "What cleaning spray and brushes suit a mechanical keyboard?"
    assert verify(a, b, "balanced").ok
    assert verify(a, b, "strict") == Verdict(False, "content words differ")


def test_normalises_unicode_and_case() -> None:
    fullwidth = "\uff28\uff2f\uff37 do I reset my password\uff1f"  # fullwidth "HOW" and "?", NFKC-normalised
    assert verify(fullwidth, "how do i reset my password?", "strict").ok
    assert verify("Why doesn\u2019t my build work?", "Why doesn't my build work?", "strict").ok  # curly apostrophe
    assert not verify("Why doesn\u2019t my build work?", "Why does my build work?").ok


def test_identical_and_empty_texts() -> None:
    for strictness in STRICTNESSES:
        assert verify("", "", strictness).ok
        assert verify("같은 질문입니다", "같은 질문입니다", strictness).ok


def test_symmetric_over_the_pair_file() -> None:
    for pair in bench.load_pairs():
        for strictness in STRICTNESSES:
            assert verify(pair.a, pair.b, strictness).ok == verify(pair.b, pair.a, strictness).ok, (pair, strictness)


def test_pair_file_shape() -> None:
    pairs = bench.load_pairs()
    assert len(pairs) >= 160
    assert len({(p.a, p.b) for p in pairs}) == len(pairs)
    assert {p.split for p in pairs} == {"tune", "test"} and {p.lang for p in pairs} == {"en", "ko"}
    assert sum(p.lang == "ko" for p in pairs) >= 30
    assert all((p.kind == "paraphrase") == p.same for p in pairs)
    assert 0.4 <= sum(p.same for p in pairs) / len(pairs) <= 0.6
    by_kind = Counter((p.kind, p.lang, p.split) for p in pairs)
    for kind, lang in {(p.kind, p.lang) for p in pairs}:  # stratified: each kind split about evenly
        assert abs(by_kind[kind, lang, "tune"] - by_kind[kind, lang, "test"]) <= 1, (kind, lang)


def test_cheap() -> None:
    pairs = bench.load_pairs()
    verifier._features.cache_clear()
    start = time.perf_counter()
    for pair in pairs:
        verify(pair.a, pair.b, "strict")
    per_pair = (time.perf_counter() - start) / len(pairs)
    assert per_pair < 1e-3, f"{per_pair * 1e6:.0f} µs per pair, uncached"


@pytest.fixture(scope="module")
def scored() -> tuple[bench.Scored, ...]:
    return bench.score()  # embeds every pair once with the packaged MiniLM (offline)


def test_recommended_setting_meets_the_targets_on_the_held_out_split(scored: tuple[bench.Scored, ...]) -> None:
    threshold, strictness = bench.recommend(scored)
    assert threshold in bench.THRESHOLDS and strictness in STRICTNESSES
    test = bench.figures(scored, "test", threshold, strictness)
    assert test.false_hit_rate <= bench.MAX_FALSE_HIT, test
    assert test.recall >= bench.MIN_RECALL, test


def test_cosine_alone_is_not_enough(scored: tuple[bench.Scored, ...]) -> None:
    threshold, _ = bench.recommend(scored)
    assert bench.figures(scored, "tune", threshold, "off").false_hit_rate > 0.5
