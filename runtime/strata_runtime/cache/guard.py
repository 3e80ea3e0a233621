"""The hit guard: veto a semantic hit when two similar queries still ask different things.

Embeddings put "What is 2+3?" next to "What is 2+4?", "enable 2FA" next to "disable 2FA",
and "weather in Paris" next to "weather in London". A semantic hit is rejected when the two
queries differ in any of:

* numbers (Arabic digits, English number words, Chinese numerals 一二三…万亿, full-width digits);
* negation (not/no/never/n't/without…, 不/没/别/未/无/非/勿…) or a polar verb pair
  (enable/disable, lock/unlock, 开启/关闭…);
* quoted strings ("…", '…', “…”, 「…」, 《…》);
* named entities: capitalised or mixed-case words, acronyms and alphanumeric tokens
  (iPhone, 2FA, SEPA, Paris) — a heuristic, not an NER model;
* a one-word swap: the queries are identical except one content word replaced by another
  ("cancel my card" vs "freeze my card"; for Chinese, a replaced run of 2+ Han characters in
  an otherwise identical sentence: 巴黎 vs 伦敦).

It errs towards rejecting: a false rejection costs one upstream call, a false hit serves a
wrong answer.
"""

from __future__ import annotations

import difflib
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
_CJK_NUMERALS = "零〇一二两三四五六七八九十百千万亿壹贰叁肆伍陆柒捌玖拾佰仟"
_NUMBER_RE = re.compile(r"\d+(?:[.,:/]\d+)*|[" + _CJK_NUMERALS + "]+")
_EN_NEGATIONS = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot", "cant",
    "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "wouldnt", "shouldnt",
    "couldnt", "havent", "hasnt", "hadnt", "unable", "nowhere",
}
_ZH_NEGATIONS = ("没有", "不要", "不能", "不是", "不", "没", "别", "未", "无", "非", "勿", "莫", "否")
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
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9'’\-]*|\d+[A-Za-z][A-Za-z0-9]*")  # noqa: RUF001
_HAN_RE = re.compile(r"[\u4e00-\u9fff]")
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


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _numbers(text: str) -> Counter[str]:
    found: Counter[str] = Counter(m.group(0).replace(",", "") for m in _NUMBER_RE.finditer(text))
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _NUMBER_WORDS:
            found[word] += 1
    return found


def _negations(text: str) -> int:
    lowered = re.sub(r"n['’]t\b", " not", text.lower())  # noqa: RUF001
    count = sum(1 for w in re.findall(r"[a-z]+", lowered) if w in _EN_NEGATIONS)
    han = text
    for marker in _ZH_NEGATIONS:  # longest first, so 没有 counts once
        count += han.count(marker)
        han = han.replace(marker, " ")
    return count


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


def _quoted(text: str) -> set[str]:
    return {next(g for g in m.groups() if g).strip().lower() for m in _QUOTE_RE.finditer(text)}


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
            out.add(lowered)
    return out


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


def _han_swap(a: str, b: str) -> bool:
    if not (_HAN_RE.search(a) and _HAN_RE.search(b)):
        return False
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    if matcher.ratio() < 0.5:
        return False
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "replace":
            continue
        left, right = a[i1:i2], b[j1:j2]
        if left in _ZH_FUNCTION_RUNS or right in _ZH_FUNCTION_RUNS:
            continue
        if len(_HAN_RE.findall(left)) >= 2 and len(_HAN_RE.findall(right)) >= 2:
            return True
    return False


def check(query: str, cached_query: str) -> GuardVerdict:
    """Allow a semantic hit of `query` on an entry stored for `cached_query`?"""
    a, b = _normalise(query), _normalise(cached_query)
    if a.strip().lower() == b.strip().lower():
        return GuardVerdict(True)
    if _numbers(a) != _numbers(b):
        return GuardVerdict(False, "numbers")
    if _negations(a) != _negations(b):
        return GuardVerdict(False, "negation")
    if _polar_conflict(_polar(a), _polar(b)):
        return GuardVerdict(False, "polarity")
    if _quoted(a) != _quoted(b):
        return GuardVerdict(False, "quoted")
    # An entity of one query must appear in the other, in any case ("France" vs "france" is fine).
    if _entities(a) - set(_tokens(b)) or _entities(b) - set(_tokens(a)):
        return GuardVerdict(False, "entities")
    if _one_word_swap(a, b) or _han_swap(a, b):
        return GuardVerdict(False, "substitution")
    return GuardVerdict(True)
