"""Is a semantic-cache hit really the same question? Cheap rules run after the vector search.

A MiniLM cosine says two prompts look alike, not that they ask the same thing: "convert 5 km to miles" and
"convert 5 miles to km" score 0.97. ``verify(query, cached)`` refuses a hit when the texts disagree on something
that changes the answer. Pure Python and regexes, no model; each text's features are cached (LRU).

Both texts are NFKC-normalised, quotes straightened and casefolded (entities are found before casefolding);
contractions are expanded ("can't" -> "can not") and a few phrases folded ("turn on" -> "enable", "log out" ->
"logout", "p.m." -> "pm"). English and Korean are handled; other scripts only get the script-neutral checks
(digits, quotes, capitalised Latin words). The checks, in order; the first failure names the reason:

- "numbers differ": numbers agree as multisets: digits, decimals, thousands separators ("1,000" == "1000"),
  versions ("3.10" != "3.1"), percentages, ordinals ("5th", "third"), English number words ("twenty-five",
  "twice"), Korean digits with 만/천/억 ("5만원" == 50000), native Korean numbers before a counter ("두 개").
  A lone "one" is soft: left unmatched it is ignored ("which one is faster").
- "negation differs": as many negation markers in both. English: not/n't, no, never, none, without, neither,
  nor, nobody, nothing, forbidden, prohibited, unable, avoid, prevent. Korean: 않, 안 and 못 (as words), 없 (not
  없애), 아니, 마세요/말고, 금지, 불가.
- "date differs": the same date words: month and weekday names, today/tomorrow/yesterday/tonight, morning/
  evening, this/next/last week|month|year, am/pm after a number; Korean 오늘/내일/어제, 요일, 오전/오후, 주말,
  작년/올해/내년, 이번/다음/지난 주|달|해.
- "entity differs": named entities - capitalised words not opening a sentence, acronyms, camelCase, words with
  digits ("EC2", "Q1") and, in Korean text, Latin words - must occur as words in the other text (a few aliases:
  js/javascript, mac/macos, postgres/postgresql). Balanced refuses only a swap (each text has an entity the other
  lacks); strict refuses any missing entity. "quoted text differs": a "double-quoted" or `backticked` string must
  occur verbatim in the other text.
- "antonym": for each antonym or direction pair (increase/decrease, up/down, before/after, buy/sell, enable/
  disable, min/max, first/last, add/remove, upload/download, login/logout, 키우/줄이, 켜/끄, 전/후...), neither
  text may hold a pole the other lacks while the other holds one it lacks; "un-/in-/dis-/de-/non-X" vs "X".
- "unit differs": units and currencies (km/mile, kg/lb, °C/°F, USD/$/달러, EUR/€, KRW/₩/원, MB/GB, s/min/h, %...)
  agree as sets, and so do the (number, unit) pairs ("100 USD in EUR" vs "100 EUR in USD").
- "order differs": "X to/into Y" vs "Y to/into X"; Korean "X를 Y로", "X에서 Y까지" swapped.
- "content words differ": content words (stopwords and question fillers dropped, lightly stemmed, a small synonym
  table folded, Korean words cut to their stem syllables) were swapped in an otherwise identical sentence: after
  the common head and tail, at most 3 words are left on each side and each side has a content word the other
  lacks ("reset my router" vs "reset my modem"). Strict also refuses more than 2 content words in only one text.

"balanced" runs every check, with the lenient entity rule; "strict" adds the content-word budget and the strict
entity rule; "off" accepts everything. Every check is symmetric: verify(a, b).ok == verify(b, a).ok.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

Strictness = Literal["strict", "balanced", "off"]


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str  # "" when ok; else a short machine-readable reason such as "numbers differ"


_OK = Verdict(True, "")
_LOCAL = 3  # the longest stretch, in words, that counts as a one-slot substitution
_STRICT_CONTENT_DIFF = 2  # strict: content words found in only one of the texts, at most


def _ws(s: str) -> frozenset[str]:
    return frozenset(s.split())


def _stem(w: str) -> str:
    """Light English stemmer: plurals, -ing, -ed, final e ("deleting", "deleted", "delete" -> "delet")."""
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if len(w) > len(suffix) + 2 and w.endswith(suffix):
            w = w[: -len(suffix)]
            if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "aeiouls":
                w = w[:-1]
            break
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def _split(s: str) -> list[str]:
    return s.split()


def _key(w: str) -> str:
    return _stem(w) if w.isascii() else w


def _table(spec: str) -> dict[str, str]:
    """'name: alias alias; name2: ...' -> {alias: name}; English aliases stemmed."""
    pairs = (part.split(":") for part in spec.split(";"))
    return {_key(alias): name.strip() for name, aliases in pairs for alias in aliases.split()}


def _poles(spec: str, offset: int = 0) -> dict[str, tuple[int, int]]:
    """'up upward / down downward; ...' -> {word: (pair, side)}."""
    pairs = enumerate((part.split("/") for part in spec.split(";")), offset)
    return {_key(w): (i, side) for i, sides in pairs for side in (0, 1) for w in sides[side].split()}


_STRAIGHTEN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_PHRASES = [
    (re.compile(p), r)
    for p, r in (
        (r"\b(?:can't|cannot)\b", "can not"),
        (r"\bwon't\b", "will not"),
        (r"n't\b", " not"),
        (r"\b(?:turn|switch)(?:ed|ing|s)? on\b", "enable"),
        (r"\b(?:turn|switch)(?:ed|ing|s)? off\b", "disable"),
        (r"\b(?:log|sign)(?:ged|ging|ed|ing|s)?[ -]?(in|out)\b", r"log\1"),
        (r"\bzoom(?:ing)? (in|out)\b", r"zoom\1"),
        (r"\bmost recent\b", "latest"),
        (r"\bset(?:ting)? ?up\b", "setup"),
        (r"\b([ap])\.m\.", r"\1m"),
    )
]
_TOKEN = re.compile(
    r"(?P<num>\d+(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)*)|(?P<ko>[가-힣]+)|(?P<w>[^\W\d_가-힣]+)|(?P<s>[$€£¥₩%°]|->|→)"
)
_LATIN_WORD = re.compile(r"[^\W_가-힣]+(?:[-.][^\W_가-힣]+)*")
_QUOTED = re.compile(r'"([^"]+)"|`([^`]+)`')
_HANGUL, _SENTENCE, _JOINER, _NUMBER_SUFFIX = (
    re.compile(r) for r in (r"[가-힣]", r"[.!?]\s+|\n", r"[-.]", r"\d+[a-z]+")
)

_SMALL = {w: i for i, w in enumerate(_split("zero one two three four five six seven eight nine ten eleven twelve"))}
_SMALL |= {w: i for i, w in enumerate(_split("thirteen fourteen fifteen sixteen seventeen eighteen nineteen"), 13)}
_TENS = {w: 10 * i for i, w in enumerate(_split("twenty thirty forty fifty sixty seventy eighty ninety"), 2)}
_SCALE = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_ORDINAL = {w: i for i, w in enumerate(_split("third fourth fifth sixth seventh eighth ninth tenth"), 3)}
_ORDINAL |= {"twice": 2, "thrice": 3, "dozen": 12, "twelfth": 12, "twentieth": 20, "hundredth": 100}
_KO_MULT = {"십": 10, "백": 100, "천": 1000, "만": 10**4, "억": 10**8}
_KO_NATIVE = {"하나": 1, "둘": 2, "셋": 3, "넷": 4, "다섯": 5, "여섯": 6, "일곱": 7, "여덟": 8, "아홉": 9}
_KO_DET = {"한": 1, "두": 2, "세": 3, "네": 4, "열": 10, "스무": 20} | _KO_NATIVE  # before a counter only
_KO_COUNTER = tuple(_split("개 명 번 시간 달 살 시 대 장 권 잔 가지 주 마리 병 줄 개월 분 초 층 배"))

_UNIT = _table(
    "km: km kms kilometer kilometre 킬로미터; mile: mile mi 마일; m: meter metre m 미터; mm: mm millimeter;"
    "cm: cm centimeter centimetre 센티미터 센티; ft: ft foot feet 피트; in: inch inches 인치;"
    "kg: kg kgs kilogram 킬로그램 킬로; g: g gram 그램; mg: mg milligram; lb: lb lbs pound 파운드;"
    "oz: oz ounce 온스; l: l liter litre 리터; ml: ml milliliter; gal: gallon gal 갤런; cup: cup 컵;"
    "tbsp: tablespoon tbsp; tsp: teaspoon tsp; c: celsius centigrade 섭씨; f: fahrenheit 화씨;"
    "usd: usd dollar buck 달러 불; eur: eur euro 유로; krw: krw won 원 원화; gbp: gbp sterling; jpy: jpy yen 엔 엔화;"
    "kb: kb kilobyte 킬로바이트; mb: mb megabyte 메가바이트 메가; gb: gb gigabyte 기가바이트 기가;"
    "tb: tb terabyte 테라바이트 테라; mbps: mbps; gbps: gbps; mph: mph; kmh: kmh kph;"
    "%: % percent percentage 퍼센트 프로; ms: ms millisecond 밀리초; s: s sec second 초; min: min minute 분;"
    "h: h hr hour 시간; day: day 일; week: week 주; month: month 개월; year: yr year 년;"
    "bit: bit 비트; byte: byte 바이트; px: px pixel 픽셀"
)
_AFTER_NUMBER = {
    _key(a)
    for a in _split(  # these aliases are units only right after a number
        "m g l c f s sec second min minute h hr hour day week month year yr bit byte won buck cup mi gal "
        "불 원 엔 일 주 년 분 초 시간 개월 킬로 메가 기가 테라 프로 센티 컵"
    )
}
_KO_UNIT = sorted(((a, u) for a, u in _UNIT.items() if not a.isascii()), key=lambda au: -len(au[0]))
_KO_UNIT_WORD = [(a, u) for a, u in _KO_UNIT if len(a) > 1 and a not in _AFTER_NUMBER]  # units on their own
_CURRENCY_SIGN = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₩": "krw"}
_SUFFIX = _ws("st nd rd th am pm")

_NEG = _ws(
    "not no never none without neither nor nobody nothing nowhere forbidden prohibited disallowed unable "
    "avoid avoiding prevent preventing"
)
_KO_NEG_IN = ("않", "금지", "불가", "지마", "지말")
_KO_NEG_START = tuple(_split("안되 안돼 안됨 못하 못해 못했 아니 아닌 아님 마세요 말고 말아 말라 마라"))
_MONTHS = _split("january february march april june july august september october november december")
_DATE = set(_MONTHS) | _ws(
    "today tomorrow yesterday tonight weekend weekday morning afternoon evening noon midnight "
    "monday tuesday wednesday thursday friday saturday sunday"
)
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"sept": "september", "may": "may"}  # next to a number only
_REL, _PERIOD = _ws("this next last previous coming"), _ws("week month year weekend quarter")
_KO_DATE = tuple(
    _split(
        "오늘 내일 어제 모레 그제 그저께 오전 오후 아침 저녁 새벽 주말 평일 올해 작년 내년 재작년 금년 "
        "월요일 화요일 수요일 목요일 금요일 토요일 일요일"
    )
)
_KO_REL = ("이번", "다음", "지난", "저번")
_POLE = _poles(
    "increase raise grow bigger larger / decrease reduce lower shrink smaller; up upward / down downward;"
    "before prior earlier / after later; above over / below under; left / right; buy purchase bought / sell sold;"
    "import / export; enable / disable; min minimum / max maximum; north northern / south southern;"
    "east eastern / west western; first earliest oldest / last latest; add insert append / remove delete;"
    "encrypt / decrypt; encode / decode; upload / download; inbound incoming ingress / outbound outgoing egress;"
    "ascending asc / descending desc; zoomin / zoomout; login / logout; open / close; start begin / stop;"
    "show / hide; top / bottom; fast faster quick quickly / slow slower slowly; high higher highest tallest / low"
    " lowest; hot / cold; more / less fewer; positive / negative; true / false; accept / reject; include / exclude;"
    "public / private; horizontal / vertical; uppercase / lowercase; push / pull; send / receive; input / output;"
    "read / write; allow permit / deny block; gain win / lose; adult / child kid; male man men / female woman women;"
    "summer / winter; maximize / minimize; expand / collapse; inner / outer; success / failure;"
    "good better best / bad worse worst"
)
_KO_POLES = _poles(  # Korean poles match a word's start; "=x" only the bare word (particles stripped)
    "증가 늘리 늘려 늘어 키우 키워 올리 올려 크게 확대 높이 상승 / 감소 줄이 줄여 줄어 내리 내려 작게 축소 "
    "낮추 하락; =전 전에 이전 / =후 후에 이후; =위 위쪽 / 아래 =밑; 왼쪽 좌측 / 오른쪽 우측;"
    "구매 구입 매수 / 판매 매도; 수입 / 수출; 가져오기 / 내보내기; 최소 / 최대; 북쪽 / 남쪽; 동쪽 / 서쪽;"
    "활성화 켜 켜기 켜는 / 비활성화 끄 끄기 끄는 꺼; 처음 첫 / 마지막; 추가 / 삭제 제거 지우;"
    "암호화 / 복호화; 업로드 / 다운로드; 인바운드 / 아웃바운드; 입력 / 출력; 입금 / 출금; 송신 / 수신;"
    "오름차순 / 내림차순; 로그인 / 로그아웃; 열기 여는 / 닫기 닫는; 시작 / 종료 중지 정지;"
    "빠르 빨리 / 느리 느려; 높 / 낮; 많 / 적은 적게; 공개 / 비공개; 허용 / 차단; 승인 / 거절",
    offset=1000,
)
_KO_POLE_EXACT = {p[1:]: v for p, v in _KO_POLES.items() if p[0] == "="}
_KO_POLE_PREFIX = sorted(((p, v) for p, v in _KO_POLES.items() if p[0] != "="), key=lambda pv: -len(pv[0]))
_KO_POLE_STARTS = tuple(p for p, _ in _KO_POLE_PREFIX)
_NEG_PREFIXES = ("un", "non", "in", "im", "dis", "de")

_STOP = _ws(
    "a an the and or but if then so of in on at by for with from to into onto about as than too very just also any "
    "some all each every other another such own same really actually please thanks thank hi hello help tell know "
    "need want like way best good easiest easy simple step process method possible able get make use using via "
    "there here how what why when where which who whom whose do does did doing done can could would should will "
    "shall may might must is are was were be been being am have has had having i me my mine myself we our us you "
    "your yours it its they them their he she him her this that these those s t let try trying usually command "
    "correct proper right new exact specific one going"
)
_STOP_STEMS = frozenset(_stem(w) for w in _STOP)
_SYNONYMS = _table(
    "remove: delete erase clear; fix: solve resolve repair troubleshoot; error: issue problem; install: setup;"
    "change: update modify edit switch alter; create: generate; show: display list see view check find locate "
    "located; stop: kill terminate halt quit exit; start: launch run begin execute; combine: merge join "
    "concatenate concat; cost: price fee charge; fast: quick quickly speed; big: large huge; folder: directory dir;"
    "app: application program; length: size len; website: site webpage; support: service helpdesk; discount: promo"
    " coupon; abroad: overseas; mean: meaning explain definition stand; difference: differ different vs versus "
    "compare; variable: var; environment: env; picture: photo image avatar; dictionary: dict; integer: int;"
    "repository: repo; database: db; javascript: js; postgresql: postgres; argument: arg param parameter;"
    "function: func; last: latest newest"
)
_SYN = {alias: _stem(name) for alias, name in _SYNONYMS.items()}
_ALIAS = _table(
    "javascript: js; typescript: ts; macos: mac osx; postgresql: postgres; go: golang; kubernetes: k8s;"
    "python: py; nodejs: node"
)
_KO_STOP = _ws(
    "어떻 어떻게 방법 알려 하나 하는 하려 있나 있을 가능 궁금 싶어 주세 뭐예 무엇 "
    "어디 언제 얼마 보통 해야 하고 하면 하기 해요 수 좀 제 내 저 나 법 되나 되는 "
    "돼요 인가 건가 할까 까요 나요 주나 있어 며칠 몇 더 잘 왜 꼭 다 또 곧 그 이 "
    "것 거 뭐 등 및 할 한 된 될 해 돼 줘"
)
_KO_SYN = _table(
    "변경: 바꾸 바꿔 수정; 삭제: 제거 지우 지워; 취소: 되돌; 오류: 에러 문제; 상품: 물건 제품; 확인: 보기 볼"
)
_KO_ENDING = set("어아여겨져해했었았려워와고지게는은을면기니나서요")  # verb ending after a one-syllable stem
_KO_PARTICLES = sorted(
    _ws("은 는 이 가 을 를 에 에서 에게 께 으로 로 의 도 만 와 과 랑 이랑 까지 부터 보다 처럼 요 에서는 으로는"),
    key=len,
    reverse=True,
)


def _ko_strip(t: str) -> str:
    return next((t[: -len(p)] for p in _KO_PARTICLES if len(t) > len(p) and t.endswith(p)), t)


@dataclass(slots=True)
class _Features:
    text: str = ""  # casefolded, for the quoted-string look-ups
    numbers: Counter[str] = field(default_factory=Counter)
    soft_ones: int = 0
    negations: int = 0
    dates: set[str] = field(default_factory=set)
    entities: set[str] = field(default_factory=set)
    vocab: set[str] = field(default_factory=set)  # every Latin word form, for entity look-ups
    quoted: set[str] = field(default_factory=set)
    poles: set[tuple[int, int]] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    units: set[str] = field(default_factory=set)
    quantities: Counter[tuple[str, str]] = field(default_factory=Counter)
    arrows: set[tuple[str, str]] = field(default_factory=set)
    content: set[str] = field(default_factory=set)
    seq: list[str] = field(default_factory=list)  # every word, canonicalised, in order

    def add_number(self, value: str, unit: str) -> None:
        self.numbers[value] += 1
        if unit:
            self.quantities[(value, unit)] += 1
            self.units.add(unit)


def _entities(f: _Features, raw: str) -> None:
    korean = bool(_HANGUL.search(raw))
    previous = ""
    for sentence in _SENTENCE.split(raw.replace("'s ", " ")):
        for i, m in enumerate(_LATIN_WORD.finditer(sentence)):
            w = m.group()
            if sentence[m.start() - 1 : m.start()] == "°":
                continue  # °C, °F
            parts = _JOINER.split(w.casefold())
            key = _ALIAS.get("".join(parts), "".join(parts))
            f.vocab.update((key, previous + key, *parts))
            previous = key
            if not any(c.isalpha() for c in w) or _NUMBER_SUFFIX.fullmatch(key) or w == "I" or key in _UNIT:
                continue  # numbers, "5th", "10gb" are the number and unit checks' business
            if any(c.isupper() or c.isdigit() for c in w[1:]) or (i > 0 and w[0].isupper()) or (korean and len(w) > 1):
                f.entities.add(key)


def _unit_after(toks: list[tuple[str, str]], i: int) -> str:
    """The unit written at toks[i], right after a number."""
    kind, tok = toks[i] if i < len(toks) else ("", "")
    following = toks[i + 1][1] if i + 1 < len(toks) else ""
    if tok == "°":
        return _UNIT.get(following, "")
    if kind == "w":
        return _UNIT.get(_stem(following if tok in ("square", "sq", "cubic") else tok), "")
    if kind == "ko":
        return next((u for a, u in _KO_UNIT if tok.lstrip("".join(_KO_MULT)).startswith(a)), "")
    return _UNIT.get(tok, "") if kind == "s" else ""


def _english(f: _Features, toks: list[tuple[str, str]], i: int) -> None:
    tok, stem = toks[i][1], _stem(toks[i][1])
    prev_kind, prev = toks[i - 1] if i else ("", "")
    next_kind, nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
    after_number = prev_kind == "num"
    f.words.add(tok)
    f.negations += tok in _NEG
    if tok in _ORDINAL or (tok == "second" and not after_number and prev not in ("a", "per", "each", "every")):
        f.add_number(str(_ORDINAL.get(tok, 2)), "")
    if tok in _DATE or (after_number and tok in ("am", "pm")):
        f.dates.add(tok)
    elif tok in _MONTH_ABBR and "num" in (prev_kind, next_kind):
        f.dates.add(_MONTH_ABBR[tok])
    elif tok in _REL and nxt in _PERIOD:
        f.dates.add(f"{tok}-{nxt}")
    if stem in _POLE and not after_number:
        f.poles.add(_POLE[stem])
    if stem in _UNIT and stem not in _AFTER_NUMBER:
        f.units.add(_UNIT[stem])
    if tok in ("to", "into"):
        left = next((t for k, t in reversed(toks[max(0, i - 3) : i]) if k == "w" and t not in _STOP), "")
        right = next((t for k, t in toks[i + 1 : i + 4] if k == "w" and t not in _STOP), "")
        if left and right:
            f.arrows.add((_stem(left), _stem(right)))
    canonical = _SYN.get(stem, stem)
    f.seq.append(canonical)
    unit_word = after_number and (stem in _UNIT or tok in _SUFFIX)
    if stem not in _STOP_STEMS and tok not in _NEG and len(tok) > 1 and not unit_word:
        f.content.add(canonical)


def _korean(f: _Features, toks: list[tuple[str, str]], i: int) -> None:
    tok = toks[i][1]
    after_number = i > 0 and toks[i - 1][0] == "num"
    if after_number:  # a counter or unit, read with the number: "5만원" = 50000 + "원", "3개월"
        tok = tok.lstrip("".join(_KO_MULT)) or tok
    bare = _ko_strip(tok)
    nxt = toks[i + 1][1] if i + 1 < len(toks) and toks[i + 1][0] == "ko" else ""
    negation = tok in ("안", "못") or any(n in tok for n in _KO_NEG_IN) or tok.startswith(_KO_NEG_START)
    negation = negation or ("없" in tok and "없애" not in tok)
    f.negations += negation
    number = bare in _KO_DET and nxt.startswith(_KO_COUNTER)
    if number:
        f.add_number(str(_KO_DET[bare]), "")
    elif tok in _KO_NATIVE or tok.startswith(("다섯", "여섯", "일곱", "여덟", "아홉")):
        number = True
        f.add_number(str(next(v for n, v in _KO_NATIVE.items() if tok.startswith(n))), "")
    if tok.startswith(_KO_DATE):
        f.dates.update(d for d in _KO_DATE if tok.startswith(d))
    for rel in _KO_REL:
        period = (tok[len(rel) :] or nxt) if tok.startswith(rel) else ""
        if period[:1] in ("주", "달", "해") and period:
            f.dates.add(rel + period[0])
    if bare in _KO_POLE_EXACT:
        f.poles.add(_KO_POLE_EXACT[bare])
    elif tok.startswith(_KO_POLE_STARTS):
        f.poles.add(next(v for p, v in _KO_POLE_PREFIX if tok.startswith(p)))
    if not after_number:
        f.units.update(u for a, u in _KO_UNIT_WORD if tok.startswith(a))
    if tok.endswith(("를", "을", "에서")) and nxt.endswith(("로", "으로", "까지")):
        f.arrows.add((bare[:2], _ko_strip(nxt)[:2]))
    stem = bare[:1] if bare[1:2] in _KO_ENDING else bare[:2]  # 끊겨요, 끊어져요 -> 끊; 비밀번호를 -> 비밀
    stem = _KO_SYN.get(stem, stem)
    f.seq.append(stem)
    if stem not in _KO_STOP and not (negation or number or after_number):
        f.content.add(stem)


def _number_words(f: _Features, run: list[str], unit: str) -> None:
    """Adds the number spelled by ``run`` ("twenty five", "two hundred"); a lone "one" is only a soft 1."""
    if run == ["one"]:
        f.soft_ones += 1
        return
    total = current = 0
    for w in run:
        if w == "hundred":
            current = max(current, 1) * 100
        elif w in _SCALE:
            total, current = total + max(current, 1) * _SCALE[w], 0
        else:
            current += _SMALL.get(w, 0) + _TENS.get(w, 0)
    f.add_number(str(total + current), unit)


@lru_cache(maxsize=8192)
def _features(text: str) -> _Features:
    raw = unicodedata.normalize("NFKC", text).translate(_STRAIGHTEN)
    f = _Features(text=raw.casefold())
    _entities(f, raw)
    f.quoted = {(a or b).casefold().strip() for a, b in _QUOTED.findall(raw)}
    low = f.text
    for pattern, replacement in _PHRASES:
        low = pattern.sub(replacement, low)
    toks = [
        (m.lastgroup or "", m.group())
        for m in _TOKEN.finditer(low)
        if not (m.group() == "00" and low[m.start() - 1 : m.start()] == ":")
    ]
    run: list[str] = []
    for i, (kind, tok) in enumerate(toks):
        if kind == "w" and (tok in _SMALL or tok in _TENS or tok in _SCALE):
            run.append(tok)
            continue
        if run:
            _number_words(f, run, _unit_after(toks, i))
            run = []
        if kind == "num":
            value = tok.replace(",", "")
            if "." not in value:  # integers: drop leading zeros, apply Korean multipliers ("5만" -> 50000)
                multiplier = 1
                for c in toks[i + 1][1] if i + 1 < len(toks) and toks[i + 1][0] == "ko" else "":
                    if c not in _KO_MULT:
                        break
                    multiplier *= _KO_MULT[c]
                value = str(int(value) * multiplier)
            sign = _CURRENCY_SIGN.get(toks[i - 1][1], "") if i else ""
            f.add_number(value, sign or _unit_after(toks, i + 1))
            f.seq.append(value)
        elif kind == "w":
            _english(f, toks, i)
        elif kind == "ko":
            _korean(f, toks, i)
        elif tok in _CURRENCY_SIGN:
            f.units.add(_CURRENCY_SIGN[tok])
        elif tok == "°" and i + 1 < len(toks) and toks[i + 1][1] in ("c", "f"):
            f.units.add(toks[i + 1][1])
        elif tok in ("->", "→") and 0 < i < len(toks) - 1:
            f.arrows.add((_stem(toks[i - 1][1]), _stem(toks[i + 1][1])))
    if run:
        _number_words(f, run, "")
    return f


def _numbers_agree(a: _Features, b: _Features) -> bool:
    rest_a, rest_b = a.numbers - b.numbers, b.numbers - a.numbers
    # only unmatched 1s may remain, each covered by a soft "one" of the other text
    return set(rest_a) <= {"1"} and set(rest_b) <= {"1"} and rest_a["1"] <= b.soft_ones and rest_b["1"] <= a.soft_ones


def _entity_missing(a: _Features, b: _Features, both: bool) -> bool:
    def missing(x: _Features, y: _Features) -> bool:
        return any(
            e not in y.vocab and e + "s" not in y.vocab and e.removesuffix("s") not in y.vocab for e in x.entities
        )

    return (missing(a, b) and missing(b, a)) if both else (missing(a, b) or missing(b, a))


def _antonym(a: _Features, b: _Features) -> bool:
    for pair in {p for p, _ in a.poles | b.poles}:
        sides_a, sides_b = {s for p, s in a.poles if p == pair}, {s for p, s in b.poles if p == pair}
        if sides_a - sides_b and sides_b - sides_a:
            return True
    return any(
        p + w in y and p + w not in x
        for x, y in ((a.words, b.words), (b.words, a.words))
        for w in x
        for p in _NEG_PREFIXES
        if len(w) >= (4 if p in ("un", "non") else 5)
    )


def _local_swap(a: _Features, b: _Features) -> bool:
    """Same text but for one short stretch in which content words were swapped ("reset my router" / "modem")."""
    sa, sb = a.seq, b.seq
    shortest = min(len(sa), len(sb))
    head = next((k for k in range(shortest) if sa[k] != sb[k]), shortest)
    tail = next((k for k in range(shortest - head) if sa[-1 - k] != sb[-1 - k]), shortest - head)
    if not (0 < len(sa) - head - tail <= _LOCAL and 0 < len(sb) - head - tail <= _LOCAL):
        return False
    mid_a, mid_b = set(sa[head : len(sa) - tail]) & a.content, set(sb[head : len(sb) - tail]) & b.content
    return bool(mid_a - mid_b) and bool(mid_b - mid_a)


def verify(query: str, cached: str, strictness: Strictness = "balanced") -> Verdict:
    """Whether the answer cached for the prompt ``cached`` may be served for ``query`` (see the module docstring)."""
    if strictness == "off":
        return _OK
    a, b = _features(query), _features(cached)
    if not _numbers_agree(a, b):
        return Verdict(False, "numbers differ")
    if a.negations != b.negations:
        return Verdict(False, "negation differs")
    if a.dates != b.dates:
        return Verdict(False, "date differs")
    if _entity_missing(a, b, both=strictness == "balanced"):
        return Verdict(False, "entity differs")
    if any(q not in b.text for q in a.quoted) or any(q not in a.text for q in b.quoted):
        return Verdict(False, "quoted text differs")
    if _antonym(a, b):
        return Verdict(False, "antonym")
    if a.units != b.units or a.quantities != b.quantities:
        return Verdict(False, "unit differs")
    if any((y, x) in b.arrows for x, y in a.arrows if x != y):
        return Verdict(False, "order differs")
    if _local_swap(a, b) or (strictness == "strict" and len(a.content ^ b.content) > _STRICT_CONTENT_DIFF):
        return Verdict(False, "content words differ")
    return _OK
