"""The verifier: decides whether a semantic candidate asks the same thing as the query.

One cosine threshold cannot separate paraphrases from look-alike questions with another
meaning ("flights from Paris to Rome" / "flights from Rome to Paris" score ~0.99). So the
index only proposes the nearest entries above a low *recall* cosine, and each candidate is
scored by a small logistic model over cosine plus lexical features that see what the
embedding blurs:

* token overlap (Jaccard) and ordered-bigram overlap,
* word order: how many pairs of shared tokens keep their relative order (Kendall),
* the edit similarity of the two token sequences, their length ratio and (log) length,
* two interactions (overlap x reordering, cosine x overlap),
* a differing number, a differing negation.

Tokens are lower-cased words for alphabetic scripts and single characters for Han text (the
character-level Chinese path: no word segmenter needed). The model is fitted per language
(`en`: every non-Han text, `zh`: Han text) and per embedder, by `bench/cache.py calibrate
--fit`, which writes `verifier_params.json` beside this module. For each language the file
holds the score threshold that kept wrong hits at or under several target rates on the
fitting data; the runtime takes the one for the policy's `semantic.maxWrongHitRate`.
Long questions (over LONG_TOKENS) get a model of their own when the fitting data has enough.
The hit guard (guard.py) still vetoes first. A candidate with the very same tokens in the same
order as the question (it differs in case, punctuation or width only; for Chinese also in particles,
courtesies, light words and the form of a question word, or in the order of its two halves:
`same_question`) is served without scoring. A question longer than the semantic layer reads whole
(`fully_read`) is never checked.

The linear model leans on word overlap, which serves look-alikes and refuses rewordings; two
shapes of pair are safe on cosine alone once no content token moved to another place (a swap of
roles: "from Paris to Rome" / "from Rome to Paris"):

* a near duplicate: the texts align token by token (edit similarity >= NEAR_EDIT) and no content
  token was replaced by another (only words added or dropped; for Chinese, characters only added to
  one text);
* a rewording: the texts do not align that closely.

(Near-identical texts with a replaced content word are neither: one word changes the meaning while
the cosine stays high.) Such a candidate is also served when its cosine reaches the threshold
fitted for its shape (`near`, `reworded`: per target rate, like `thresholds`); a model fitted
without them never does this.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from strata_runtime.cache import guard

PARAMS_PATH = Path(__file__).with_name("verifier_params.json")
FEATURES = ("cosine", "jaccard", "bigram_jaccard", "order", "edit", "length_ratio", "number_diff",
            "negation_diff", "log_length", "reordered_overlap", "cosine_x_jaccard")
_TOKEN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)
_HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_MAX_TOKENS = 96
# The semantic layer reads a question whole or not at all. The local embedders read a text's first
# 2,000 characters and the features its first _MAX_TOKENS tokens: two long prompts that share their
# beginning (a pasted document, then another question) would look identical. A longer question is
# cached by exact match only (`fully_read`), and a longer stored one is never a candidate.
MAX_QUESTION_CHARS = 2000
# Longer questions (tokens: words, or Han characters) get their own fitted model when the data has
# enough of them: long declarative sentences and short user queries behave differently.
LONG_TOKENS = {"en": 20, "zh": 30}
# A near-duplicate aligns this much (difflib ratio over tokens) with the question.
NEAR_EDIT = 0.8
# Words whose place carries no role: a moved or replaced "the" is not a swap of meaning. Han
# characters are tokens of their own and all count as content (stricter for Chinese).
_FUNCTION_WORDS = frozenset({
    "the", "a", "an", "of", "in", "on", "at", "to", "by", "for", "and", "or", "is", "was", "were", "are",
    "be", "been", "has", "have", "had", "with", "as", "from", "that", "this", "it", "its", "his", "her",
    "their",
})


def language(text: str) -> str:
    """`zh` when Han characters make up at least a third of the letters, else `en`."""
    han = len(_HAN_RE.findall(text))
    if han == 0:
        return "en"
    letters = sum(1 for ch in text if ch.isalpha())
    return "zh" if han * 3 >= letters else "en"


@lru_cache(maxsize=4096)  # a question is checked against several candidates; read-only results
def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text[:MAX_QUESTION_CHARS]).lower())[:_MAX_TOKENS]


def fully_read(text: str) -> bool:
    """The embedder and the verifier read all of this question (MAX_QUESTION_CHARS, _MAX_TOKENS)."""
    if len(text) > MAX_QUESTION_CHARS:
        return False
    return len(_TOKEN_RE.findall(unicodedata.normalize("NFKC", text))) <= _MAX_TOKENS


# What a Chinese question can gain or lose without asking anything else: modal particles, courtesies,
# the guard's light words (到底, 已经, 这个, 你知道…吗), and the colloquial forms of question words
# (如何 = 怎么, 啥 = 什么).
_ZH_SAME_WORDS = (("怎么样", "怎么"), ("怎样", "怎么"), ("如何", "怎么"), ("咋样", "怎么"), ("咋", "怎么"),
                  ("为啥", "为什么"), ("为何", "为什么"), ("什么样", "什么"), ("啥", "什么"), ("哪里", "哪"),
                  ("哪儿", "哪"))
_ZH_SPARE_WORDS = re.compile("|".join(["请问", "谢谢", "感谢", "麻烦", "你好", "您好", "^请",
                                        *sorted(guard.ZH_LIGHT_WORDS, key=len, reverse=True)]))
_ZH_PARTICLES = frozenset("吗呢吧啊呀啦哦嘛么哇呐噢喔")


def same_question(query: str, cached: str) -> bool:
    """The same words in the same order, case, punctuation, width and Chinese particles, courtesies or
    light words aside (`plain_tokens`); for Chinese, also the two halves of one question in the other order (a
    topic put first or last: 推荐几本好看的小说 / 好看的小说推荐几本, 打电话给表弟 / 给表弟打电话). A swap
    of roles is no such rotation: 张三给李四转钱 / 李四给张三转钱 keeps 给 in the middle."""
    a, b = plain_tokens(query), plain_tokens(cached)
    if a == b:
        return True
    return language(query) == "zh" and len(a) == len(b) and any(a[k:] + a[:k] == b for k in range(1, len(a)))


@lru_cache(maxsize=4096)
def plain_tokens(text: str) -> list[str]:
    """The tokens of a Chinese question less what cannot change its answer (_ZH_SAME_WORDS made one,
    _ZH_SPARE_WORDS and _ZH_PARTICLES dropped); another text's tokens unchanged. Dropping a light word
    may cut a word that holds it (可以, 会议): both texts lose the same characters."""
    if language(text) != "zh":
        return tokens(text)
    plain = unicodedata.normalize("NFKC", text).lower()
    for word, same in _ZH_SAME_WORDS:
        plain = plain.replace(word, same)
    return [t for t in tokens(_ZH_SPARE_WORDS.sub("", plain.strip())) if t not in _ZH_PARTICLES]


def _jaccard(a: set[Any], b: set[Any]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _order(a: list[str], b: list[str]) -> float:
    """Fraction of pairs of tokens (unique in both texts) that keep their relative order."""
    pos_b = {t: i for i, t in enumerate(b)}
    once_a = {t for t in a if a.count(t) == 1}
    shared = [pos_b[t] for t in a if t in once_a and t in pos_b and b.count(t) == 1]
    n = len(shared)
    if n < 2:
        return 1.0
    agree = sum(1 for i in range(n) for j in range(i + 1, n) if shared[i] < shared[j])
    return agree / (n * (n - 1) / 2)


@lru_cache(maxsize=256)  # features() and shape() of one candidate align the same pair, back to back
def _aligned(query: str, cached: str) -> difflib.SequenceMatcher[str]:
    """The token alignment of a pair (the matcher keeps its matching blocks once computed)."""
    return difflib.SequenceMatcher(None, tokens(query), tokens(cached), autojunk=False)


def edit_shape(query: str, cached: str) -> tuple[int, int, float]:
    """(content tokens moved, content tokens replaced, edit similarity) between the two texts' tokens.

    A token is moved when both texts have it but the longest in-order alignment does not keep it in
    place; replaced when an aligned stretch swaps it for another content token."""
    matcher = _aligned(query, cached)
    a, b = tokens(query), tokens(cached)  # (cached) the lists the matcher aligned
    kept: Counter[str] = Counter()
    for block in matcher.get_matching_blocks():
        kept.update(a[block.a:block.a + block.size])
    moved = (Counter(a) & Counter(b)) - kept
    n_moved = sum(n for t, n in moved.items() if t not in _FUNCTION_WORDS)

    def content(part: Sequence[str]) -> int:
        return sum(1 for t in part if t not in _FUNCTION_WORDS and t not in moved)

    replaced = sum(min(content(a[i1:i2]), content(b[j1:j2]))
                   for op, i1, i2, j1, j2 in matcher.get_opcodes() if op == "replace")
    return n_moved, replaced, matcher.ratio()


def shape(query: str, cached: str) -> str | None:
    """`near` (the texts align, words only added or dropped), `reworded` (they do not align closely,
    no content token moved), or None (a content token moved, or one was replaced in aligned texts)."""
    moved, replaced, similarity = edit_shape(query, cached)
    if moved:
        return None
    if similarity < NEAR_EDIT:
        return "reworded"
    return "near" if replaced == 0 and (language(query) != "zh" or _only_added(query, cached)) else None


def _only_added(query: str, cached: str) -> bool:
    """One text's plain tokens are the other's with some left out. For Chinese a near duplicate must
    be that: a character dropped on one side and another added on the other (中学 / 高中) is a
    replaced word the character alignment cannot see."""
    shorter, longer = sorted((plain_tokens(query), plain_tokens(cached)), key=len)
    rest = iter(longer)
    return all(token in rest for token in shorter)


def features(query: str, cached: str, cosine: float) -> list[float]:
    a, b = tokens(query), tokens(cached)
    bigrams_a, bigrams_b = set(itertools.pairwise(a)), set(itertools.pairwise(b))
    length = min(len(a), len(b)) / max(len(a), len(b), 1)
    number_diff = float(guard.numbers_differ(query, cached))
    negation_diff = float((guard._negations(query) > 0) != (guard._negations(cached) > 0))
    edit = _aligned(query, cached).ratio()
    jaccard, order = _jaccard(set(a), set(b)), _order(a, b)
    return [cosine, jaccard, _jaccard(bigrams_a, bigrams_b), order, edit, length, number_diff, negation_diff,
            math.log1p(min(len(a), len(b))), jaccard * (1.0 - order), cosine * jaccard]


@dataclass(frozen=True)
class LanguageModel:
    recall: float  # candidates under this cosine are not checked
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    thresholds: tuple[tuple[float, float], ...]  # (max wrong-hit rate, score threshold), rate ascending
    # (max wrong-hit rate, cosine) at or above which a near duplicate / a rewording is served
    # whatever its score
    near: tuple[tuple[float, float], ...] = ()
    reworded: tuple[tuple[float, float], ...] = ()

    def score(self, values: Sequence[float]) -> float:
        z = self.bias + sum(
            w * (v - m) / s for w, v, m, s in zip(self.weights, values, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    def threshold_for(self, max_wrong_hit_rate: float) -> float:
        """The most permissive fitted threshold whose wrong-hit rate is within the target."""
        return _most_permissive(self.thresholds, max_wrong_hit_rate)

    def shape_cosines(self, max_wrong_hit_rate: float) -> dict[str, float]:
        """The cosine for each shape at this target; above 1 (never) when none was fitted."""
        return {"near": _most_permissive(self.near, max_wrong_hit_rate, never=2.0),
                "reworded": _most_permissive(self.reworded, max_wrong_hit_rate, never=2.0)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> LanguageModel:
        return LanguageModel(
            recall=float(d["recall"]),
            mean=tuple(d["mean"]),
            scale=tuple(d["scale"]),
            weights=tuple(d["weights"]),
            bias=float(d["bias"]),
            thresholds=tuple((float(r), float(t)) for r, t in d["thresholds"]),
            near=tuple((float(r), float(t)) for r, t in d.get("near", ())),
            reworded=tuple((float(r), float(t)) for r, t in d.get("reworded", ())),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "recall": self.recall,
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
            "bias": self.bias,
            "thresholds": [list(x) for x in self.thresholds],
            "near": [list(x) for x in self.near],
            "reworded": [list(x) for x in self.reworded],
        }


def _most_permissive(table: tuple[tuple[float, float], ...], max_wrong_hit_rate: float, never: float = 1.0) -> float:
    chosen = never  # stricter than every fitted rate: never serve
    for rate, threshold in table:
        if rate <= max_wrong_hit_rate + 1e-12:
            chosen = threshold
    return chosen


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str | None = None  # guard reason, "verifier", or "recall"
    score: float = 0.0


class Verifier:
    """Fitted models for one embedder; `check` is pure CPU, about 0.1 ms per candidate."""

    def __init__(self, models: dict[str, LanguageModel], max_wrong_hit_rate: float):
        self.models = models
        self.max_wrong_hit_rate = max_wrong_hit_rate
        self._thresholds = {lang: m.threshold_for(max_wrong_hit_rate) for lang, m in models.items()}
        self._shapes = {lang: m.shape_cosines(max_wrong_hit_rate) for lang, m in models.items()}

    def model_key(self, query: str) -> str:
        """`en`/`zh`, or `en-long`/`zh-long` for a long question when a model was fitted for those."""
        lang = language(query)
        if len(tokens(query)) > LONG_TOKENS[lang] and f"{lang}-long" in self.models:
            return f"{lang}-long"
        return lang

    def recall(self, query: str) -> float:
        return self.models[self.model_key(query)].recall

    def check(self, query: str, cached: str, cosine: float) -> Decision:
        key = self.model_key(query)
        model = self.models[key]
        if cosine < model.recall:
            return Decision(False, "recall")
        if not (fully_read(query) and fully_read(cached)):
            return Decision(False, "long")
        verdict = guard.check(query, cached)
        if not verdict.allowed:
            return Decision(False, verdict.reason or "other")
        if same_question(query, cached):
            # The linear model need not be monotone at that corner (collinear overlap features).
            return Decision(True, None, 1.0)
        score = model.score(features(query, cached, cosine))
        threshold = self._thresholds[key]
        # 1.0 means "no threshold met the target on the fitting data": never serve, even for a score
        # that rounds to 1.0 in floating point.
        if threshold < 1.0 and score >= threshold:
            return Decision(True, None, score)
        cosines = self._shapes[key]
        # The shape costs an alignment: only worked out when some shape's cosine is reached.
        allowed = cosine >= min(cosines.values()) and cosine >= cosines.get(shape(query, cached) or "", 2.0)
        return Decision(allowed, None if allowed else "verifier", score)


def check_unverified(query: str, cached: str) -> Decision:
    """The check for an embedder without a fitted verifier (behind its one cosine threshold): the
    guard, and no content word moved. Nothing else reads word order there, and a cosine barely
    moves when words change places ("from Paris to Rome" / "from Rome to Paris"); the price is the
    paraphrases that reorder their words."""
    if not (fully_read(query) and fully_read(cached)):
        return Decision(False, "long")
    verdict = guard.check(query, cached)
    if not verdict.allowed:
        return Decision(False, verdict.reason or "other")
    if edit_shape(query, cached)[0]:
        return Decision(False, "moved")
    return Decision(True)


@cache
def _load_params(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def verifier_for(embedder_name: str, max_wrong_hit_rate: float, path: Path = PARAMS_PATH) -> Verifier | None:
    """The fitted verifier for this embedder, or None when none was fitted (cosine threshold only)."""
    entry = _load_params(path).get("embedders", {}).get(embedder_name)
    if not entry:
        return None
    models = {lang: LanguageModel.from_json(d) for lang, d in entry["languages"].items()}
    if {"en", "zh"} - set(models):
        return None
    return Verifier(models, max_wrong_hit_rate)


# fitting (used by bench/cache.py calibrate --fit; kept here so the feature code has one home) -----


def fit_logistic(
    x: list[list[float]], y: list[int], l2: float = 1.0, iterations: int = 50
) -> tuple[list[float], list[float], list[float], float]:
    """Standardised L2-regularised logistic regression by Newton's method: (mean, scale, weights, bias)."""
    import numpy as np

    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    mean = xs.mean(axis=0)
    scale = xs.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = np.hstack([(xs - mean) / scale, np.ones((len(xs), 1))])
    w = np.zeros(z.shape[1])
    reg = np.eye(z.shape[1]) * l2
    reg[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40, 40)))
        grad = z.T @ (p - ys) + reg @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return mean.tolist(), scale.tolist(), w[:-1].tolist(), float(w[-1])
