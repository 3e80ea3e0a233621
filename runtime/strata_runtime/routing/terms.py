"""Layer 1's skill-term check: does a short request name something one of the agent's skills is about?

Computed when a skill set is indexed (never per query): the vocabulary of every skill's
description, keywords, capabilities and examples, without stop words and without terms too
common across the skills (an inverse-document-frequency cut, see `SkillTermsFeature`). Per query,
only the message's own terms are extracted and looked up in a frozen set: microseconds, no embedding.

Terms: runs of letters (lower-cased; a trailing plural -s, -ing or -ed removed from longer words;
at least two letters), and for Chinese/Japanese/Korean text, which has no spaces, the pairs of
adjacent characters of each run once stop words have been cut out of it (a run of one character is
that character).

Terms only meet terms of their own script: a short Chinese request cannot share a term with skills
written only in English (nor the reverse), though L1.5 may well route it (a multilingual embedder,
or the composite's second rows). Such a request goes on to L1.5 (`reason_to_keep`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from strata_runtime.config.agents import SkillConfig
from strata_runtime.config.policies import SkillTermsFeature

_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK_RANGES}]+")
_WORD = re.compile(r"[^\W\d_]{2,}")


class Vocabulary(frozenset[str]):
    """The distinctive terms of a skill set, and which scripts they are in."""

    cjk: bool  # has Chinese/Japanese/Korean terms
    words: bool  # has terms of other letters

    def __new__(cls, terms: Iterable[str] = ()) -> Vocabulary:
        vocabulary = super().__new__(cls, terms)
        vocabulary.cjk = any(_is_cjk(t) for t in vocabulary)
        vocabulary.words = any(not _is_cjk(t) for t in vocabulary)
        return vocabulary


def _is_cjk(term: str) -> bool:
    return _CJK_RUN.fullmatch(term) is not None


def _stem(word: str) -> str:
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class SkillTerms:
    """The tokeniser of one policy (its stop words compiled once)."""

    def __init__(self, config: SkillTermsFeature):
        self.config = config
        self._words: set[str] = set()
        cjk: list[str] = []
        for raw in config.stop_words:
            word = unicodedata.normalize("NFKC", raw).strip().lower()
            if not word:
                continue
            if _CJK_RUN.fullmatch(word):
                cjk.append(word)
            else:
                self._words.update(_stem(w) for w in _WORD.findall(_CJK_RUN.sub(" ", word)))
        self._cjk_stop = (re.compile("|".join(re.escape(w) for w in sorted(set(cjk), key=len, reverse=True)))
                          if cjk else None)

    def terms(self, text: str) -> set[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        out = {stem for w in _WORD.findall(_CJK_RUN.sub(" ", text)) if (stem := _stem(w)) not in self._words}
        for run in _CJK_RUN.findall(text):
            pieces = self._cjk_stop.split(run) if self._cjk_stop is not None else [run]
            for piece in pieces:
                if len(piece) == 1:
                    out.add(piece)
                else:
                    out.update(piece[i:i + 2] for i in range(len(piece) - 1))
        return out

    def vocabulary(self, skills: Sequence[SkillConfig]) -> Vocabulary:
        """The distinctive terms of a skill set: in at most maxSkillShare of the skills that have any
        text, or in only one of them."""
        per_skill = [self._skill_terms(s) for s in skills]
        per_skill = [t for t in per_skill if t]
        frequency = Counter(term for terms in per_skill for term in terms)
        most = max(1.0, self.config.max_skill_share * len(per_skill))
        return Vocabulary(term for term, df in frequency.items() if df <= most)

    def _skill_terms(self, skill: SkillConfig) -> set[str]:
        texts: Iterable[str] = [skill.description, *skill.keywords, *skill.capabilities, *skill.examples]
        return set().union(*(self.terms(t) for t in texts))

    def reason_to_keep(self, message: str, vocabulary: Vocabulary) -> str | None:
        """Why a short message goes on to L1.5 rather than straight to chat: a term it shares with the
        skills, or terms of a script none of the skills' terms is in; None: it goes to chat."""
        if not vocabulary:
            return None
        terms = self.terms(message)
        found = sorted(terms & vocabulary)
        if found:
            return f"shares the skill term {found[0]!r}"
        if any(_is_cjk(t) for t in terms) and not vocabulary.cjk:
            return "Chinese/Japanese/Korean terms, skills without any"
        if any(not _is_cjk(t) for t in terms) and not vocabulary.words:
            return "terms in letters, skills only in Chinese/Japanese/Korean"
        return None
