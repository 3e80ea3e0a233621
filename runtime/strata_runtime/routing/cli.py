"""`strata-runtime routing fit --policy FILE --labelled FILE.jsonl`: calibrate Layer 1.5 thresholds.

FILE is either a runtime config (its `routing` section is updated, skills come from its agents)
or a RoutingPolicy manifest (its `spec` is updated; skills and the embedder come from the
runtime config given with `--config`). Labelled lines are JSON `{"text": ..., "skill": name}`,
`"skill": null` for a message no skill should take. The fitted `semantic.low/high` and the
per-skill `semantic.skills` are written back into FILE (YAML; comments are not kept) and
coverage/accuracy on the labelled lines are printed (in-sample: measure on other lines too). A
labelled line may also be one of its skill's examples: it is then scored against the skills with a
fifth of those examples left out (its own among them), so the same lines can serve as examples and
as calibration without making the thresholds optimistic.

`high` is the lowest threshold whose precision reaches --target there and at every higher
threshold; a set of fewer than ceil(1 / (1 - target)) lines above a threshold (34 at 0.97, 50 at
0.98) is judged as if it held that many, so one wrong line among the most confident does not push
`high` above nearly every message (two still do).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import yaml
from pydantic import ValidationError

from strata_runtime.config.agents import SkillConfig
from strata_runtime.config.loading import ConfigError, describe_validation_error, load_config, parse_config
from strata_runtime.config.policies import RoutingPolicySpec
from strata_runtime.config.runtime import EmbedderConfig, RuntimeConfig
from strata_runtime.embeddings.contract import (
    Embedder,
    EmbeddingUnavailable,
    embed_searched,
    rows_and_owners,
    rows_of_each,
    vector_blocks,
)
from strata_runtime.embeddings.factory import build_embedder
from strata_runtime.routing.calibrate import Fit, Scored, fit, report
from strata_runtime.routing.index import EMBED_BATCH, Index, build_index
from strata_runtime.routing.router import MAX_EMBED_CHARS
from strata_runtime.routing.semantic import SemanticLayer, index_options

INVALID = 2


class FitError(Exception):
    """A bad input file; the message says which and where."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strata-runtime routing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fit_cmd = sub.add_parser("fit", help="fit per-skill low/high thresholds and write them into the policy")
    fit_cmd.add_argument("--policy", required=True, help="runtime config or RoutingPolicy manifest (YAML)")
    fit_cmd.add_argument("--labelled", required=True, help="JSON lines {text, skill} (skill null: out of scope)")
    fit_cmd.add_argument("--config", help="runtime config with the agents' skills and the embedder "
                         "(needed when --policy is a RoutingPolicy manifest)")
    fit_cmd.add_argument("--agent", help="agent id whose skills are routed (default: the only agent with skills)")
    fit_cmd.add_argument("--target", type=float, default=0.97, help="precision routed straight to a skill (fewer than "
                         "ceil(1/(1-target)) lines above a threshold may hold one wrong line)")
    fit_cmd.add_argument("--dry-run", action="store_true", help="print the thresholds, do not write FILE")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_fit(args)
    except (FitError, ConfigError) as e:
        print(f"strata-runtime routing fit: {e}", file=sys.stderr)
        return INVALID


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise FitError(f"cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise FitError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise FitError(f"{path}: the top level must be a mapping")
    return raw


def policy_node(document: dict[str, Any], path: Path) -> dict[str, Any]:
    """The mapping that holds the policy fields inside FILE (created when absent)."""
    if document.get("kind") == "RoutingPolicy":
        node = document.setdefault("spec", {})
    else:
        node = document.setdefault("routing", {})
    if not isinstance(node, dict):
        raise FitError(f"{path}: the routing policy must be a mapping")
    return node


def pick_skills(config: RuntimeConfig, agent_id: str | None) -> list[SkillConfig]:
    agents = [a for a in config.agents if a.skills and (agent_id is None or a.id == agent_id)]
    if agent_id is not None and not agents:
        raise FitError(f"no agent {agent_id!r} with skills in the config")
    if len(agents) != 1:
        raise FitError("several agents have skills: choose one with --agent" if agents
                       else "no agent in the config has skills")
    return agents[0].skills


def read_labelled(path: Path, names: set[str]) -> list[tuple[str, str | None]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FitError(f"cannot read {path}: {e.strerror}") from e
    out: list[tuple[str, str | None]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise FitError(f"{path}:{number}: not JSON ({e})") from None
        text, skill = (item.get("text"), item.get("skill")) if isinstance(item, dict) else (None, None)
        if not isinstance(text, str) or not text.strip():
            raise FitError(f"{path}:{number}: text must be a non-empty string")
        if skill is not None and skill not in names:
            raise FitError(f"{path}:{number}: unknown skill {skill!r}")
        out.append((text, skill))
    if not out:
        raise FitError(f"{path}: no labelled lines")
    return out


FOLDS = 5  # labelled lines that are also examples of their skill are scored out of this many folds


class _Memo:
    """The embedder, each distinct text embedded once (the folds' indexes re-use the skills' vectors)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.name, self.dimension = embedder.name, embedder.dimension
        self.blocks = vector_blocks(embedder)
        self.vectors: dict[str, npt.NDArray[np.float32]] = {}
        self.searched: dict[str, npt.NDArray[np.float32]] = {}  # text -> its rows (embed_searched)

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> npt.NDArray[np.float32]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        for start in range(0, len(missing), EMBED_BATCH):
            chunk = missing[start:start + EMBED_BATCH]
            self.vectors.update(zip(chunk, await self.embedder.embed(chunk, background=background), strict=True))
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        return np.stack([self.vectors[t] for t in texts])

    async def embed_searched(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        """SearchedRows, memoised per text: each text's rows, its `embed` row first."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.searched))
        for start in range(0, len(missing), EMBED_BATCH):
            chunk = missing[start:start + EMBED_BATCH]
            for text, rows in zip(chunk, rows_of_each(*await embed_searched(self.embedder, chunk), len(chunk)),
                                  strict=True):
                self.searched[text], self.vectors[text] = rows, rows[0]
        return rows_and_owners([self.searched[t] for t in texts], self.dimension)

    async def close(self) -> None:
        """Nothing to close: the embedder belongs to whoever made this memo."""


def in_sample_folds(skills: Sequence[SkillConfig], labelled: Sequence[tuple[str, str | None]]) -> dict[int, int]:
    """Line number -> fold, for the labelled lines that are also one of their skill's examples: scored
    against their own example they would look surer than any new message (the similarity of a text
    to itself), so each is scored against an index without its fold's examples."""
    examples = {s.name: {e.strip() for e in s.examples} for s in skills}
    seen: dict[str, int] = {}
    folds: dict[int, int] = {}
    for number, (text, label) in enumerate(labelled):
        if label is not None and text.strip() in examples.get(label, set()):
            folds[number] = seen.get(label, 0) % FOLDS
            seen[label] = seen.get(label, 0) + 1
    return folds


async def score(skills: list[SkillConfig], labelled: list[tuple[str, str | None]], embedder_config: EmbedderConfig,
                policy: RoutingPolicySpec) -> list[Scored]:
    """L1.5's top skill and score for each line, with the embedder and aggregation in force; a line that
    is also one of its skill's examples is scored out of fold (see `in_sample_folds`)."""
    # an offline batch: the per-request deadline of the runtime would fail it on a busy machine
    batch_config = embedder_config.model_copy(update={"timeout_seconds": max(embedder_config.timeout_seconds, 60.0)})
    embedder = build_embedder(batch_config, dict(os.environ))
    try:
        return await score_with(skills, labelled, embedder, policy)
    finally:
        await embedder.close()


async def score_with(skills: list[SkillConfig], labelled: list[tuple[str, str | None]], embedder: Embedder,
                     policy: RoutingPolicySpec) -> list[Scored]:
    """`score` with this embedder (left open)."""
    memo = _Memo(embedder)
    try:
        layer = SemanticLayer(policy.semantic)
        vectors = await memo.embed([t.strip()[:MAX_EMBED_CHARS] or " " for t, _ in labelled])  # as the router
        folds = in_sample_folds(skills, labelled)
        index_of: dict[int, Index] = {-1: await build_index(skills, memo, **index_options(policy.semantic))}
        for fold in sorted(set(folds.values())):
            held = {(labelled[n][1], labelled[n][0].strip()) for n, f in folds.items() if f == fold}
            reduced = [s.model_copy(update={"examples": [e for e in s.examples if (s.name, e.strip()) not in held]})
                       for s in skills]
            index_of[fold] = await build_index(reduced, memo, **index_options(policy.semantic))
        scored: list[Scored] = []
        for number, (vector, (_, label)) in enumerate(zip(vectors, labelled, strict=True)):
            zone = layer.zone(index_of[folds.get(number, -1)], vector)
            scored.append(Scored(zone.candidates[0].skill if zone.candidates else None, zone.score, label))
        return scored
    except EmbeddingUnavailable as e:
        raise FitError(f"the embedder failed: {e}") from e


def write_back(node: dict[str, Any], fitted: Fit) -> RoutingPolicySpec:
    semantic = node.setdefault("semantic", {})
    semantic.update(low=fitted.low, high=fitted.high,
                    skills=[{"name": n, "low": lo, "high": hi} for n, (lo, hi) in sorted(fitted.skills.items())])
    try:
        return RoutingPolicySpec.model_validate(node)
    except ValidationError as e:
        raise FitError(f"the fitted policy is invalid:\n{describe_validation_error(e)}") from None


def run_fit(args: argparse.Namespace) -> int:
    if not 0.0 < args.target < 1.0:
        raise FitError(f"--target is a precision between 0 and 1 (exclusive), not {args.target}")
    path = Path(args.policy)
    document = read_yaml(path)
    node = policy_node(document, path)
    if document.get("kind") == "RoutingPolicy":
        if not args.config:
            raise FitError("--policy is a RoutingPolicy manifest: give the runtime config with --config")
        config = load_config(args.config)
    else:
        config = parse_config(document, source=str(path))
    try:
        policy = RoutingPolicySpec.model_validate(node)
    except ValidationError as e:
        raise FitError(f"{path}: invalid routing policy:\n{describe_validation_error(e)}") from None
    skills = pick_skills(config, args.agent)
    labelled = read_labelled(Path(args.labelled), {s.name for s in skills})
    scored = asyncio.run(score(skills, labelled, config.embedder, policy))
    fitted = fit(scored, target=args.target)
    result = report(scored, fitted)
    write_back(node, fitted)
    print(f"fitted on {result.items} labelled lines ({result.in_scope} in scope), target precision {args.target}")
    print(f"  default thresholds: low {fitted.low}  high {fitted.high}; per skill: {len(fitted.skills)}")
    print(f"  routed without an LLM call: {result.coverage:.1%} at accuracy {result.accuracy:.1%}")
    print(f"  L1.5 top-1 accuracy (in scope): {result.top1:.1%}; out-of-scope routed high: {result.oos_high:.1%}")
    print("  (in-sample figures: check them on labelled lines the fit did not see)")
    if args.dry_run:
        print(yaml.safe_dump({"semantic": node["semantic"]}, sort_keys=False, allow_unicode=True))
        return 0
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    print(f"wrote {path}")
    return 0
