"""The hit guard: veto a semantic hit when two similar queries still ask different things.

Embeddings put "What is 2+3?" next to "What is 2+4?", "enable 2FA" next to "disable 2FA",
and "weather in Paris" next to "weather in London". A semantic hit is rejected when the two
queries differ in any of:

* numbers (Arabic digits, English number words, Chinese numerals 一二三…万亿, full-width digits),
  compared by value (23 = 二十三); a lone 一 counts as 1 or as nothing, since it is mostly the
  article "a" (一个, 一种) or part of a word (一起, 统一);
* negation (not/no/never/n't/without…, 不/没/别/未/无/非/勿…, simplified or traditional; not in
  words such as 南非, 非常, 分别, 未来, 是否, nor in a yes/no question: 有没有, 好不好, 好找不?) or a
  polar verb pair (enable/disable, lock/unlock, 开启/关闭…);
* quoted strings ("…", '…', “…”, 「…」, 《…》);
* named entities: capitalised or mixed-case words, acronyms and alphanumeric tokens
  (iPhone, 2FA, SEPA, Paris), a dotted name taken whole (Amazon.in, Node.js) — a heuristic,
  not an NER model; names compare without a plural -s, hyphens, dots or spaces (ATM = ATMs,
  Top-up = top up, U.S. = US);
* a one-word swap: the queries are identical except one content word replaced by another
  ("cancel my card" vs "freeze my card"; for Chinese, a replaced run of 2+ Han characters in
  an otherwise identical sentence: 巴黎 vs 伦敦);
* a short Chinese question (at most 8 Han characters once question words and particles are set
  aside) with a content character added, dropped or replaced, light words (ZH_LIGHT_WORDS) aside:
  肾虚吃什么好 vs 肾虚吃什么药, 十七点半叫我 vs 十七点半叫我起床. In a question that short each
  character carries its meaning, and a model fitted on long sentences reads one changed character
  as a small edit. The same characters in another order are left to the verifier.

It errs towards rejecting: a false rejection costs one upstream call, a false hit serves a
wrong answer.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

_NUMBER_WORDS = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
    "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "thousand", "million",
    "billion", "first", "second", "third", "fourth", "fifth", "half", "once", "twice", "dozen",
}
_CJK_DIGITS = {c: i % 10 for i, c in enumerate("零一二三四五六七八九〇壹贰叁肆伍陆柒捌玖")} | {"两": 2}
_CJK_UNITS = {"十": 10, "拾": 10, "百": 100, "佰": 100, "千": 1000, "仟": 1000}
_CJK_BIG = {"万": 10**4, "萬": 10**4, "亿": 10**8, "億": 10**8}
_CJK_NUMERALS = "".join([*_CJK_DIGITS, *_CJK_UNITS, *_CJK_BIG])
# Banker's numerals are everyday characters when alone: 陆军 (army), 伍斯特 (Worcester), 收拾 (tidy).
_CJK_FINANCIAL = set("壹贰叁肆伍陆柒捌玖拾佰仟")
_NUMBER_RE = re.compile(r"\d+(?:[.,:/]\d+)*|[" + _CJK_NUMERALS + "]+")
_EN_NEGATIONS = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot", "cant",
    "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "wouldnt", "shouldnt",
    "couldnt", "havent", "hasnt", "hadnt", "unable", "nowhere",
}
_ZH_NEGATIONS = (
    "没有", "沒有", "不要", "不能", "不是", "不", "没", "沒", "别", "別", "未", "无", "無", "非", "勿", "否",
)
# Words that contain a negation character without negating anything: 南非 (South Africa), 非常 (very),
# 分别 (respectively), 类别 (category), 未来 (future), 是否 (whether), 不列颠 (Britain)...
# 莫 is not a marker at all: in today's Chinese it is mostly a sound in a name (莫斯科, 蒂莫西).
_ZH_NOT_NEGATIONS = (
    "非常", "南非", "非洲", "是非", "分别", "類別", "类别", "特别", "特別", "区别", "區別", "别人", "別人",
    "别的", "别名", "告别", "级别", "性别", "识别", "个别", "差别", "派别", "杜尚别", "未来", "未來",
    "是否", "否则", "能否", "可否", "与否", "不列颠", "不仅", "不但", "不断", "不久", "不过",
)
# Word pairs with opposite meaning that embeddings place close together.
_POLAR_PAIRS = [
    ("enable", "disable"), ("activate", "deactivate"), ("lock", "unlock"), ("block", "unblock"),
    ("freeze", "unfreeze"), ("allow", "deny"), ("increase", "decrease"), ("add", "remove"),
    ("deposit", "withdraw"), ("buy", "sell"), ("start", "stop"), ("open", "close"),
    ("include", "exclude"), ("before", "after"), ("import", "export"), ("upload", "download"),
    ("encrypt", "decrypt"), ("subscribe", "unsubscribe"), ("install", "uninstall"), ("max", "min"),
    ("maximum", "minimum"), ("more", "less"), ("higher", "lower"), ("above", "below"),
    ("credit", "debit"), ("send", "receive"), ("sent", "received"), ("incoming", "outgoing"),
    ("开启", "关闭"), ("启用", "禁用"), ("打开", "关闭"), ("增加", "减少"), ("存款", "取款"),
    ("买入", "卖出"), ("冻结", "解冻"), ("锁定", "解锁"), ("收款", "付款"), ("上调", "下调"),
]
_POLAR_WORDS: dict[str, str] = {}
for _a, _b in _POLAR_PAIRS:
    _POLAR_WORDS.setdefault(_a, f"{_a}/{_b}")
    _POLAR_WORDS.setdefault(_b, f"{_a}/{_b}")
_QUOTE_RE = re.compile(
    r"\"([^\"]+)\"|“([^”]+)”|「([^」]+)」|『([^』]+)』|《([^》]+)》|(?<!\w)'([^']+)'(?!\w)|‘([^’]+)’"  # noqa: RUF001
)
# A word, or a dotted name taken whole (Amazon.in, Node.js, ASP.NET: not Amazon against Amazon.in).
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9'’\-]*(?:\.[A-Za-z0-9]+)*|\d+[A-Za-z][A-Za-z0-9]*")  # noqa: RUF001
_HAN_RE = re.compile(r"[\u4e00-\u9fff]")
_HAN_TOKEN_RE = re.compile(r"[\u4e00-\u9fff]|[^\W_\u4e00-\u9fff]+")
# Words that start sentences or are capitalised for grammar, not because they name something.
_COMMON = {
    "i", "i'm", "i've", "i'd", "i'll", "a", "an", "the", "what", "whats", "what's", "how", "why", "when",
    "where", "who", "which", "can", "could", "would", "should", "will", "is", "are", "was", "were", "do",
    "does", "did", "have", "has", "had", "my", "me", "you", "your", "we", "our", "it", "its", "it's",
    "this", "that", "these", "those", "there", "please", "hi", "hello", "hey", "thanks", "thank", "ok",
    "okay", "yes", "so", "and", "but", "or", "if", "am", "tell", "show", "give", "help", "explain",
    "let", "let's", "in", "on", "for", "to", "of", "at", "with", "from", "by", "as", "about",
    "any", "some", "all", "just", "also", "still", "now", "today", "again", "why's", "how's", "where's",
    "im", "ive", "id", "dont", "cant", "isnt", "hows", "wheres", "who's", "whos", "be",
    "make", "get", "got", "need", "want", "may", "might", "must", "shall", "not", "no",
} | _NUMBER_WORDS | _EN_NEGATIONS
_ZH_FUNCTION_RUNS = {
    "怎么", "如何", "怎样", "什么", "哪些", "哪个", "可以", "能否", "能不能", "请问", "请", "一下", "吗",
    "呢", "吧", "啊", "的", "了", "我", "我的", "你", "您", "是否", "是不是", "应该", "需要", "想", "要",
}


@dataclass(frozen=True)
class GuardVerdict:
    allowed: bool
    reason: str | None = None


# Per-text analyses are memoised: a lookup checks one question against up to five candidates, and
# stored questions come back in many lookups. Their results are read, never mutated.
_per_text = functools.lru_cache(maxsize=4096)


@_per_text
def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _cjk_value(run: str) -> str:
    """二十三 -> "23", 三千 -> "3000", 百万 -> "1000000", 二〇〇四 -> "2004" (digits read one by one)."""
    if not any(c in _CJK_UNITS or c in _CJK_BIG for c in run):
        return "".join(str(_CJK_DIGITS[c]) for c in run)
    total = section = digit = 0
    for c in run:
        if c in _CJK_DIGITS:
            digit = _CJK_DIGITS[c]
        elif c in _CJK_UNITS:
            section += (digit or 1) * _CJK_UNITS[c]
            digit = 0
        else:
            total += (section + digit or 1) * _CJK_BIG[c]
            section = digit = 0
    return str(total + section + digit)


def _number_value(token: str) -> str:
    token = token.replace(",", "")
    if token[0].isdigit():
        return str(int(token)) if token.isdigit() else token
    return _cjk_value(token)


@_per_text
def _numbers(text: str) -> tuple[Counter[str], int]:
    """The numbers of a text as values, and how many lone 一 it has.

    A lone 一 is mostly the article "a" (一个, 一种, 一位) or part of a word (一起, 统一, 唯一): it
    may stand for 1 against the other text, or for nothing. Arabic and Chinese numerals compare
    by value (23 = 二十三); a lone banker's numeral is an ordinary character.
    """
    found: Counter[str] = Counter()
    lone_one = 0
    for m in _NUMBER_RE.finditer(text):
        token = m.group(0)
        if token == "一":
            lone_one += 1
        elif not (len(token) == 1 and token in _CJK_FINANCIAL):
            found[_number_value(token)] += 1
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _NUMBER_WORDS:
            found[word] += 1
    return found, lone_one


def numbers_differ(a: str, b: str) -> bool:
    """The two texts name different numbers (a lone 一 may stand for 1 or for nothing)."""
    (found_a, ones_a), (found_b, ones_b) = _numbers(a), _numbers(b)
    only_a, only_b = found_a - found_b, found_b - found_a
    return not (set(only_a) <= {"1"} and set(only_b) <= {"1"}
                and only_a["1"] <= ones_b and only_b["1"] <= ones_a)


# Chinese asks yes/no questions with a negation character that negates nothing: "A-not-A"
# (有没有, 好不好, 会不会, 可不可以, 喜不喜欢) and a final 不/没 before the question mark (好找不?,
# 吃饭没?). Both are set aside before counting; "why not" (为什么不?) keeps its negation.
_ZH_A_NOT_A = re.compile(r"([\u4e00-\u9fff]{1,2})[不没沒]\1")
_ZH_FINAL_NOT = re.compile(r"(?<![么麼啥何])[不没沒](?=\s*(?:[?？]|$))")  # noqa: RUF001


@_per_text
def _negations(text: str) -> int:
    lowered = re.sub(r"n['’]t\b", " not", text.lower())  # noqa: RUF001
    count = sum(1 for w in re.findall(r"[a-z]+", lowered) if w in _EN_NEGATIONS)
    han = _ZH_FINAL_NOT.sub("", _ZH_A_NOT_A.sub(r"\1", text))
    for word in _ZH_NOT_NEGATIONS:
        han = han.replace(word, " ")
    for marker in _ZH_NEGATIONS:  # longest first, so 没有 counts once
        count += han.count(marker)
        han = han.replace(marker, " ")
    return count


@_per_text
def _polar(text: str) -> set[str]:
    lowered = text.lower()
    found = {_POLAR_WORDS[w] + ":" + w for w in re.findall(r"[a-z]+", lowered) if w in _POLAR_WORDS}
    for word, pair in _POLAR_WORDS.items():
        if _HAN_RE.match(word) and word in text:
            found.add(pair + ":" + word)
    return found


def _polar_conflict(a: set[str], b: set[str]) -> bool:
    """Both queries use a polar pair, with different members ("enable" vs "disable")."""
    groups_a: dict[str, set[str]] = {}
    groups_b: dict[str, set[str]] = {}
    for found, groups in ((a, groups_a), (b, groups_b)):
        for item in found:
            pair, _, word = item.partition(":")
            groups.setdefault(pair, set()).add(word)
    return any(pair in groups_b and groups_b[pair] != words for pair, words in groups_a.items())


@_per_text
def _quoted(text: str) -> set[str]:
    return {next(g for g in m.groups() if g).strip().lower() for m in _QUOTE_RE.finditer(text)}


def _entity_key(word: str) -> str:
    """A name as compared across the two texts: lower case, without hyphens, apostrophes or dots
    (Top-up = top up = topup, U.S. = US), without a plural -s on words of 4+ letters (ATMs = ATM)."""
    key = re.sub(r"['’\-.]", "", word.lower())  # noqa: RUF001
    return key[:-1] if len(key) >= 4 and key.endswith("s") and not key.endswith("ss") else key


@_per_text
def _entities(text: str) -> set[str]:
    out = set()
    for token in _WORD_RE.findall(text):
        bare = token.strip("'’-")  # noqa: RUF001
        if not bare:
            continue
        lowered = bare.lower()
        named = (
            bare[0].isupper()
            or any(c.isupper() for c in bare[1:])
            or any(c.isdigit() for c in bare)
        )
        if named and lowered not in _COMMON:
            out.add(_entity_key(bare))
    return out


@_per_text
def _entity_keys(text: str) -> set[str]:
    """Every word of a text, and every two adjacent words joined, as _entity_key compares them."""
    words = re.findall(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?", text)  # noqa: RUF001
    return {_entity_key(w) for w in words} | {_entity_key(x + y) for x, y in itertools.pairwise(words)}


@_per_text
def _tokens(text: str) -> list[str]:
    return re.findall(r"[\w'’]+", text.lower())  # noqa: RUF001


def _one_word_swap(a: str, b: str) -> bool:
    ta, tb = _tokens(a), _tokens(b)
    if len(ta) != len(tb) or len(ta) < 2:
        return False
    diffs = [(x, y) for x, y in zip(ta, tb, strict=True) if x != y]
    if len(diffs) != 1:
        return False
    x, y = diffs[0]
    if _HAN_RE.search(x) or _HAN_RE.search(y):
        return False  # Han text is not space-separated; handled by _han_swap
    return x not in _COMMON and y not in _COMMON


@_per_text
def _han_tokens(text: str) -> list[str]:
    """Single Han characters and runs of other letters or digits (punctuation and spaces dropped): what
    _han_swap aligns, a list as long as the verifier's tokens, not the text's characters."""
    return _HAN_TOKEN_RE.findall(text)


def _han_swap(a: str, b: str) -> bool:
    if not (_HAN_RE.search(a) and _HAN_RE.search(b)):
        return False
    ta, tb = _han_tokens(a), _han_tokens(b)
    matcher = difflib.SequenceMatcher(a=ta, b=tb, autojunk=False)
    if matcher.ratio() < 0.5:
        return False
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "replace":
            continue
        left, right = "".join(ta[i1:i2]), "".join(tb[j1:j2])
        if left in _ZH_FUNCTION_RUNS or right in _ZH_FUNCTION_RUNS:
            continue
        if len(_HAN_RE.findall(left)) >= 2 and len(_HAN_RE.findall(right)) >= 2:
            return True
    return False


SHORT_HAN = 8  # content characters of the shorter Chinese question up to which any changed one vetoes
# Set aside before comparing characters: question words and particles, courtesies, and what the
# numbers and negation rules already compare (numerals, negation characters, traditional or not).
_ZH_COURTESIES = ("非常感谢", "谢谢", "感谢", "麻烦", "你好", "您好")
_ZH_MODALS = ("该",)  # 该 = 应该 (already a function run): 我怎么重置密码 / 我该怎么重置密码
_ZH_SET_ASIDE = sorted({*_ZH_FUNCTION_RUNS, *_ZH_COURTESIES, *_ZH_MODALS}, key=len, reverse=True)
_ZH_SET_ASIDE_CHARS = set(_CJK_NUMERALS) | {c for w in _ZH_NEGATIONS for c in w if len(w) == 1}
# Colloquial forms of question words (怎么样, 咋, 啥): set aside like the question words.
_ZH_QUESTION_FORMS = ("怎么样", "咋", "啥", "哪里", "哪儿", "什么样")
# Words that shade a question without changing what it asks, by grammatical class: modal particles,
# modal verbs, adverbs of emphasis, frequency and degree, conjunctions, demonstratives, the copula,
# 在 (at / -ing), more courtesies, measure words (个, 些), verbs that frame a question (告诉我…,
# 你知道…吗, 你觉得…) and perfective adverbs (已, 已经). Not prepositions that mark roles: 我给你玩 /
# 我跟你玩 differ. The verifier's same-question rule leaves them out too.
ZH_LIGHT_WORDS = (
    "呀", "啦", "哦", "嘛", "么", "哇", "能", "会", "可", "到底", "究竟", "老是", "总是", "一直", "经常", "也", "都",
    "还", "就", "又", "才", "真的", "其实", "比较", "挺", "很", "和", "与", "跟", "及", "或", "或者", "而且", "那么",
    "这", "那", "这个", "那个", "在", "是", "多谢", "帮忙", "帮我", "求", "大家", "各位", "亲", "个", "些", "告诉",
    "知道", "觉得", "认为", "已", "已经",
)
_ZH_SET_ASIDE_LIGHT = sorted({*_ZH_SET_ASIDE, *_ZH_QUESTION_FORMS, *ZH_LIGHT_WORDS}, key=len, reverse=True)


@_per_text
def _han_content(text: str, light_too: bool = False) -> str:
    """The Han characters of a mostly-Chinese text less those set aside (_ZH_SET_ASIDE runs, with
    `light_too` _ZH_QUESTION_FORMS and ZH_LIGHT_WORDS as well, then _ZH_SET_ASIDE_CHARS); empty for a
    text that is not mostly Chinese."""
    han = len(_HAN_RE.findall(text))
    letters = sum(1 for ch in text if ch.isalpha())
    if han == 0 or han * 3 < letters:
        return ""
    for run in _ZH_SET_ASIDE_LIGHT if light_too else _ZH_SET_ASIDE:
        text = text.replace(run, "")
    return "".join(ch for ch in _HAN_RE.findall(text) if ch not in _ZH_SET_ASIDE_CHARS)


def _short_han_edit(a: str, b: str) -> bool:
    ca, cb = _han_content(a), _han_content(b)
    if not ca or not cb or min(len(ca), len(cb)) > SHORT_HAN:
        return False
    return Counter(_han_content(a, light_too=True)) != Counter(_han_content(b, light_too=True))


def check(query: str, cached_query: str) -> GuardVerdict:
    """Allow a semantic hit of `query` on an entry stored for `cached_query`?"""
    a, b = _normalise(query), _normalise(cached_query)
    if a.strip().lower() == b.strip().lower():
        return GuardVerdict(True)
    if numbers_differ(a, b):
        return GuardVerdict(False, "numbers")
    if _negations(a) != _negations(b):
        return GuardVerdict(False, "negation")
    if _polar_conflict(_polar(a), _polar(b)):
        return GuardVerdict(False, "polarity")
    if _quoted(a) != _quoted(b):
        return GuardVerdict(False, "quoted")
    # An entity of one query must appear in the other, in any case ("France" vs "france" is fine).
    if _entities(a) - _entity_keys(b) or _entities(b) - _entity_keys(a):
        return GuardVerdict(False, "entities")
    if _one_word_swap(a, b) or _han_swap(a, b):
        return GuardVerdict(False, "substitution")
    if _short_han_edit(a, b):
        return GuardVerdict(False, "short-edit")
    return GuardVerdict(True)
