"""CachePolicy and RoutingPolicy specs: the same shapes in the runtime file and in the CRDs."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from strata_runtime.config.base import ConfigModel


class ExactCacheConfig(ConfigModel):
    """Cache hits on byte-identical requests."""

    enabled: bool = Field(True, description="Serve identical requests from the cache.")
    ttl_seconds: int = Field(3600, ge=1, le=30 * 86400, description="Lifetime of an exact entry.")


class SemanticCacheConfig(ConfigModel):
    """Cache hits on requests that mean the same (embedding similarity, with a hit guard)."""

    enabled: bool = Field(True, description="Serve similar requests from the cache. Only a last user message of "
                          "at most 2,000 characters and 96 words (a Han character counts as one) is matched by "
                          "meaning; a longer one, such as a pasted document and a question, by exact match only.")
    threshold: float | None = Field(
        None, ge=0.5, le=1.0,
        description="Minimum cosine similarity of the last user message. Unset (the default): candidates are "
        "proposed from a low recall cosine and each one is checked by the verifier fitted for the local "
        "embedder (bench/cache.py calibrate); set: no candidate under this cosine is served. An embedder "
        "without a fitted verifier uses this value, or 0.93 when unset, with the hit guard, and refuses a "
        "candidate whose content words moved.",
    )
    max_wrong_hit_rate: float = Field(
        0.01, ge=0.001, le=0.1,
        description="Target share of look-alike questions with another meaning that may be served a cached "
        "answer: picks the verifier's acceptance threshold (lower: fewer wrong hits and fewer hits).",
    )
    ttl_seconds: int = Field(86400, ge=1, le=30 * 86400, description="Lifetime of a semantic entry.")
    max_temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Requests hotter than this never use the semantic cache."
    )


class CachePolicySpec(ConfigModel):
    """How the runtime caches LLM responses (exact and semantic)."""

    enabled: bool = Field(True, description="false: no response caching at all.")
    backend: Literal["auto", "redis", "memory"] = Field(
        "auto", description="auto: Redis when configured, else in-process memory; redis or memory: only that."
    )
    scope: Literal["tenant", "user", "shared"] = Field(
        "user",
        description="Who may share entries: user (default): each end user of a tenant has their own entries "
        "when the request names a user, calls without a user share the tenant's; tenant: all users of a "
        "tenant share; shared: everyone (only for public, non-personal content). The caller's ACL scope is "
        "part of every key.",
    )
    exact: ExactCacheConfig = Field(ExactCacheConfig(), description="Exact-match cache.")
    semantic: SemanticCacheConfig = Field(SemanticCacheConfig(), description="Semantic (similarity) cache.")
    max_entries: int = Field(
        10000, ge=1, le=10_000_000,
        description="Entries kept per backend (memory or Redis) before the oldest are evicted.",
    )
    max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024,
        description="Bytes of stored answers kept per backend (memory or Redis) before the oldest are evicted.",
    )
    streaming: bool = Field(True, description="Cache streamed responses and replay them as SSE.")


RuleRoute = Literal["direct", "skill", "reject"]


class RoutingRule(ConfigModel):
    """Layer 0: a regular expression or keywords that route matching requests without further analysis."""

    pattern: str | None = Field(None, min_length=1, description="Python regular expression.")
    keywords: list[str] = Field([], max_length=1000, description="Literal alternatives (any language), used "
                                "instead of pattern.")
    route: str = Field("direct", pattern=r"^(direct|reject|skill:\S.*)$",
                       description="direct: plain chat; reject: refuse the request; skill:<name>: that skill.")
    anchored: bool = Field(True, description="Match the whole message (apart from surrounding whitespace and "
                           "trailing punctuation); false: anywhere in it.")
    case_sensitive: bool = Field(False, description="Match letter case exactly.")

    @model_validator(mode="after")
    def _one_valid_matcher(self) -> RoutingRule:
        if (self.pattern is None) == (not self.keywords):
            raise ValueError("set exactly one of pattern or keywords")
        if any(not k.strip() for k in self.keywords):
            raise ValueError("keywords must not be empty strings")
        try:
            re.compile(self.expression())
        except re.error as e:
            raise ValueError(f"pattern is not a valid regular expression: {e}") from e
        return self

    def expression(self) -> str:
        if self.pattern is not None:
            return self.pattern
        return "(?:" + "|".join(re.escape(k.strip()) for k in self.keywords) + ")"

    def target(self) -> tuple[RuleRoute, str | None]:
        if self.route.startswith("skill:"):
            return "skill", self.route.removeprefix("skill:").strip()
        return ("reject", None) if self.route == "reject" else ("direct", None)


class ComplexityFeature(ConfigModel):
    """A complexity cue: when its pattern occurs in the message, its weight is added to the score."""

    name: str = Field(min_length=1, max_length=64, description="Name of the cue, shown in routing decisions.")
    pattern: str = Field(min_length=1, description="Python regular expression, searched case-insensitively.")
    weight: float = Field(ge=0.0, le=1.0, description="Added to the complexity score (0-1) when the pattern occurs.")

    @model_validator(mode="after")
    def _pattern_compiles(self) -> ComplexityFeature:
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"heuristic feature {self.name!r}: invalid pattern: {e}") from e
        return self


class LengthFeature(ConfigModel):
    weight: float = Field(0.6, ge=0.0, le=1.0, description="Score of a message of fullAtWords words or more.")
    full_at_words: int = Field(6, ge=1, le=10_000, description="Words (each CJK character counts as one) at "
                               "which the length feature reaches its weight.")


DEFAULT_COMPLEXITY_FEATURES = [
    ComplexityFeature(name="question", weight=0.3, pattern=(
        r"[?\uFF1F]|^\s*(what|how|why|when|where|who|which|whose|can|could|would|should|is|are|do|does|did|will)\b"
        r"|[吗呢]\s*$|什么|怎么|为什么|如何|哪|多少")),
    ComplexityFeature(name="code", weight=0.4, pattern=(
        r"```|\b(def|class|function|import|return|const|select|insert)\b|=>|[{};]\s*$"
        r"|\b(code|python|java|javascript|sql|regex|bug|stack ?trace)\b|代码|编程|程序")),
    ComplexityFeature(name="maths", weight=0.3, pattern=(
        r"\d\s*[-+*/\u00D7\u00F7^=]\s*\d|\b(solve|equation|integral|derivative|probability|calculate|compute)\b"
        r"|方程|计算|积分|概率|求和")),
    ComplexityFeature(name="multiStep", weight=0.3, pattern=(
        r"\b(then|after that|afterwards|step by step|first|finally|compare)\b|然后|首先|接着|最后|步骤|比较")),
]


# Words that say nothing about which skill a request is for: function words, and chit-chat (so that
# "hi", "thanks", "你好" stay with direct chat even when a skill's examples contain them).
DEFAULT_STOP_WORDS = [
    # English function words
    "a", "about", "above", "after", "again", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing",
    "done", "down", "during", "each", "few", "for", "from", "further", "get", "got", "had", "has", "have",
    "having", "he", "her", "here", "hers", "him", "his", "how", "if", "in", "into", "is", "it", "its", "just",
    "let", "like", "me", "might", "mine", "more", "most", "much", "must", "my", "myself", "need", "not", "now",
    "of", "off", "on", "once", "only", "or", "other", "our", "ours", "out", "over", "own", "same", "shall", "she",
    "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "those", "through", "to", "too", "under", "until", "up", "us", "very", "want", "was", "we", "were",
    "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your",
    "yours", "yourself",
    # English chit-chat
    "hi", "hello", "hey", "thanks", "thank", "thx", "bye", "goodbye", "ok", "okay", "yes", "yeah", "yep", "no",
    "nope", "please", "sorry", "cool", "great", "nice", "good", "fine", "well", "morning", "evening", "night",
    "welcome", "lot", "sure", "right", "really",
    # Chinese function words
    "的", "了", "吗", "呢", "吧", "啊", "呀", "哦", "嗯", "么", "是", "在", "和", "与", "也", "都", "就", "还", "又",
    "这", "那", "个", "我", "你", "您", "他", "她", "它", "们", "请", "把", "给", "被", "让", "一下", "一个", "很",
    "有", "要", "想", "能", "会", "可以", "什么", "怎么", "如何", "为什么", "哪", "多少", "不", "没", "没有", "帮",
    # Chinese chit-chat
    "你好", "您好", "谢谢", "感谢", "多谢", "再见", "拜拜", "好的", "好", "早上好", "晚上好", "晚安", "没事", "不客气",
]


class SkillTermsFeature(ConfigModel):
    """Keeps L1 from answering a request that names what a skill is about.

    When the agent's skills are indexed, each skill's description, keywords, capabilities and
    examples give a vocabulary: words (English and other space-separated scripts, lower-cased, a
    plural or -ing/-ed ending removed) and character pairs for Chinese/Japanese/Korean text. Stop
    words are removed first, and a term found in more than maxSkillShare of the skills (and in more
    than one) is dropped as too common to point at a skill (an inverse-document-frequency cut:
    idf = ln(skills / skills with the term) must exceed ln(1 / maxSkillShare)). A low-complexity
    request sharing a remaining term with the vocabulary goes on to Layer 1.5 (and Layer 2) like any
    other request, instead of direct chat.
    """

    enabled: bool = Field(True, description="Let low-complexity requests that share a distinctive term with a "
                          "skill reach the semantic router.")
    max_skill_share: float = Field(0.25, gt=0.0, le=1.0, description="A term found in more than this share of "
                                   "the skills (and in more than one) is too common to keep a request from L1.")
    stop_words: list[str] = Field(DEFAULT_STOP_WORDS, max_length=5000, description="Words never counted as "
                                  "skill terms (function words and chit-chat, in every language used); a Chinese "
                                  "stop word also splits the text around it before character pairs are taken.")


class HeuristicRoutingConfig(ConfigModel):
    """Layer 1: a cheap complexity score; simple requests go straight to chat.

    score = length.weight * min(1, words / length.fullAtWords) + the weights of the features found, capped at 1.
    """

    enabled: bool = Field(True, description="Send low-complexity requests straight to chat.")
    low_complexity_below: float = Field(
        0.3, ge=0.0, le=1.0, description="Requests scoring below this (0-1) are answered by direct chat."
    )
    length: LengthFeature = Field(LengthFeature(), description="The message-length feature.")
    features: list[ComplexityFeature] = Field(DEFAULT_COMPLEXITY_FEATURES, max_length=50,
                                              description="Pattern features (question, code, maths, multi-step).")
    skill_terms: SkillTermsFeature = Field(SkillTermsFeature(), description="Low-complexity requests sharing a "
                                           "distinctive term with a skill go on to Layer 1.5, and so do those "
                                           "with terms in a script none of the skills' terms is in (Chinese "
                                           "asked of skills written in English, or the reverse).")


class SkillThresholds(ConfigModel):
    """Layer 1.5 thresholds of one skill (written by `strata-runtime routing fit`)."""

    name: str = Field(min_length=1, description="Skill name.")
    high: float = Field(ge=0.0, le=1.0, description="Above: route straight to the skill.")
    low: float = Field(ge=0.0, le=1.0, description="Below: no hint is passed to the classifier.")

    @model_validator(mode="after")
    def _low_not_above_high(self) -> SkillThresholds:
        if self.low > self.high:
            raise ValueError(f"semantic.skills[{self.name}].low must not exceed its high")
        return self


class SemanticRoutingConfig(ConfigModel):
    """Layer 1.5: the request's embedding compared with each skill's texts and examples."""

    enabled: bool = Field(True, description="Compare requests with skill embeddings.")
    high: float = Field(0.8, ge=0.0, le=1.0, description="Confidence above which the request goes straight to "
                        "the skill. The default suits the bundled embedders with the default "
                        "whitening; fit it for your skills and embedder with `strata-runtime routing fit`.")
    low: float = Field(0.5, ge=0.0, le=1.0, description="Confidence below which no hint is passed to the "
                       "classifier (default: suits the default embedder, like high).")
    aggregation: Literal["max", "meanTopK"] = Field(
        "max", description="A skill's score: the mean of its similarity to the request of its best-matching "
        "text (max) or of its topK best (meanTopK), and of the similarity of its centroid (mean of its texts)."
    )
    top_k: int = Field(3, ge=1, le=100, description="Texts averaged by meanTopK.")
    confidence: Literal["scoreAndLead", "scoreAndProbability"] = Field(
        "scoreAndLead", description="What the zones compare with high/low. scoreAndLead: the top skill's score "
        "plus marginWeight times its lead over the second skill, capped at 1. scoreAndProbability: the mean of "
        "the top skill's score and its probability under a logistic regression of the skills' texts, fitted when "
        "the skills are indexed (unfitted, high 0.625 and low 0.325 route about as the defaults do with "
        "scoreAndLead). The scales differ: refit high/low with `strata-runtime routing fit` after changing it."
    )
    margin_weight: float = Field(
        1.0, ge=0.0, le=10.0, description="With confidence scoreAndLead, the weight of the top skill's lead over "
        "the second skill (0: the top score alone)."
    )
    classifier_c: float = Field(
        10.0, gt=0.0, le=1e6, description="With confidence scoreAndProbability, the inverse weight of the "
        "logistic regression's L2 penalty (as scikit-learn's C): larger fits the skills' texts more closely."
    )
    whitening: float | None = Field(
        0.8, ge=0.0, le=1.0, description="Similarities are taken after whitening the embeddings with the skills' "
        "shared within-skill covariance, fitted when the skills are indexed and shrunk towards the identity by "
        "this weight (1: centring only; null: raw cosine similarities; embedders of more than 1,024 "
        "dimensions always use raw cosines). Directions in which every skill's "
        "texts vary then weigh less than those that separate skills. Changes the scale of the scores: refit "
        "high/low with `strata-runtime routing fit` after changing it.",
    )
    prefilter_skills: int = Field(
        64, ge=0, le=100_000, description="With more skills than this, only the skills whose centroid is "
        "nearest are scored text by text (0: always all)."
    )
    timeout_seconds: float = Field(2.0, gt=0, le=60, description="Deadline for the query embedding; "
                                   "past it the request skips this layer.")
    skills: list[SkillThresholds] = Field([], max_length=10_000,
                                          description="Per-skill thresholds; skills not listed use high/low.")

    @model_validator(mode="after")
    def _low_not_above_high(self) -> SemanticRoutingConfig:
        if self.low > self.high:
            raise ValueError("semantic.low must not exceed semantic.high")
        names = [t.name for t in self.skills]
        if len(names) != len(set(names)):
            raise ValueError("semantic.skills lists a skill twice")
        return self


class ClassifierConfig(ConfigModel):
    """Layer 2: an LLM picks the skill."""

    enabled: bool = Field(True, description="Ask an LLM when the earlier layers did not decide.")
    model: str | None = Field(None, description="Logical model used for Layer 2 classification (default: the "
                              "agent's model).")
    timeout_seconds: float = Field(5.0, gt=0, le=120, description="Deadline; past it the request goes to chat.")
    cache_entries: int = Field(10_000, ge=1, le=10_000_000, description="Classifications kept per runtime.")
    cache_ttl_seconds: float = Field(3600, gt=0, description="How long a classification is reused.")


class RoutingPolicySpec(ConfigModel):
    """How a request finds its skill: regex rules, a complexity heuristic, skill embeddings, an LLM classifier."""

    rules: list[RoutingRule] = Field([], max_length=1000, description="Layer 0 rules, tried in order.")
    heuristic: HeuristicRoutingConfig = Field(HeuristicRoutingConfig(), description="Layer 1 complexity heuristic.")
    semantic: SemanticRoutingConfig = Field(SemanticRoutingConfig(), description="Layer 1.5 semantic router.")
    classifier: ClassifierConfig = Field(ClassifierConfig(), description="Layer 2 LLM classifier.")
