"""L1.5's logistic regression (`index.fit_classifier`) and the confidence built on its probability
(`semantic.confidence: scoreAndProbability`), and the policy fields through the CRD."""

from __future__ import annotations

from typing import Any

import jsonschema
import numpy as np
import numpy.typing as npt
import pytest

from strata_operator.crdgen import all_crds
from strata_operator.models import AgentDeploymentSpec
from strata_operator.reconcile import Inputs, Owner, render_runtime_config
from strata_runtime.config.policies import RoutingPolicySpec, SemanticRoutingConfig
from strata_runtime.routing.index import SkillIndex, fit_classifier, index_from_vectors
from strata_runtime.routing.router import Router
from strata_runtime.routing.semantic import SemanticLayer, index_options

pytestmark = pytest.mark.unit

Array = npt.NDArray[np.float32]


def unit_rows(rows: npt.NDArray[np.float64]) -> Array:
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


def clusters(skills: int, per_skill: int, dim: int, noise: float, seed: int = 7) -> tuple[Array, list[int]]:
    """`per_skill` noisy unit rows around each skill's own random direction, grouped by skill."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((skills, dim))
    rows = np.repeat(centres, per_skill, axis=0) + noise * rng.standard_normal((skills * per_skill, dim))
    return unit_rows(rows), [per_skill] * skills


def centroids_of(vectors: Array, counts: list[int]) -> Array:
    starts = np.cumsum(counts) - np.asarray(counts)
    return unit_rows(np.add.reduceat(vectors.astype(np.float64), starts, axis=0))


def softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def gradient(vectors: Array, counts: list[int], weights: Array, bias: Array, c: float
             ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The objective's gradient in float64: mean cross-entropy + |weights|^2 / (2 c rows)."""
    x = vectors.astype(np.float64)
    labels = np.repeat(np.arange(len(counts)), counts)
    p = softmax(x @ weights.T.astype(np.float64) + bias)
    p[np.arange(len(x)), labels] -= 1.0
    return (p.T @ x) / len(x) + weights / (c * len(x)), p.sum(axis=0) / len(x)


def test_separable_skills_get_a_high_probability_for_the_right_one() -> None:
    vectors, counts = clusters(4, 8, 16, noise=0.3)
    fitted = fit_classifier(vectors, np.asarray(counts), centroids_of(vectors, counts), 10.0)
    assert fitted is not None
    weights, bias = fitted
    assert weights.shape == (4, 16) and bias.shape == (4,)
    probabilities = softmax(vectors.astype(np.float64) @ weights.T + bias)
    labels = np.repeat(np.arange(4), counts)
    assert (probabilities.argmax(axis=1) == labels).all()
    assert probabilities[np.arange(len(labels)), labels].min() > 0.9


def test_the_fit_reaches_the_optimum_and_is_deterministic() -> None:
    vectors, counts = clusters(5, 6, 12, noise=1.0, seed=3)  # overlapping skills: a real optimum to find
    centroids = centroids_of(vectors, counts)
    first = fit_classifier(vectors, np.asarray(counts), centroids, 10.0, max_steps=3000, tolerance=1e-6)
    second = fit_classifier(vectors, np.asarray(counts), centroids, 10.0, max_steps=3000, tolerance=1e-6)
    assert first is not None and second is not None
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    grad_w, grad_b = gradient(vectors, counts, *first, c=10.0)
    assert max(np.abs(grad_w).max(), np.abs(grad_b).max()) < 1e-5  # float32 rounding of a converged fit
    start = fit_classifier(vectors, np.asarray(counts), centroids, 10.0, max_steps=0)
    assert start is not None
    assert max(np.abs(g).max() for g in gradient(vectors, counts, *start, c=10.0)) > 1e-3  # the steps did the work


def test_without_steps_the_fit_is_the_centroids_softmax_at_a_fitted_temperature() -> None:
    vectors, counts = clusters(6, 5, 10, noise=0.5)
    centroids = centroids_of(vectors, counts)
    fitted = fit_classifier(vectors, np.asarray(counts), centroids, 10.0, work=0)
    assert fitted is not None
    weights, bias = fitted
    scale = float(weights[0] @ centroids[0])
    assert scale > 1.0 and np.allclose(weights, scale * centroids, atol=1e-5) and not bias.any()


def test_degenerate_inputs_give_finite_probabilities() -> None:
    one = index_from_vectors(["only"], [], unit_rows(np.array([[1.0, 0.0], [0.8, 0.6]])), [2], classifier_c=10.0)
    assert one.probability(unit_rows(np.array([[0.0, 1.0]]))[0], 0) == pytest.approx(1.0)
    # a skill with one row among larger ones, and two skills with the very same rows
    vectors, _ = clusters(3, 4, 8, noise=0.4)
    vectors = np.vstack([vectors[:1], vectors[4:], vectors[4:8]])
    index = index_from_vectors(["single", "b", "c", "twin"], [], vectors, [1, 4, 4, 4], classifier_c=10.0)
    assert index.weights is not None and index.bias is not None
    assert np.isfinite(index.weights).all() and np.isfinite(index.bias).all()
    for query in vectors:
        total = sum(index.probability(query, s) or 0.0 for s in range(4))
        assert total == pytest.approx(1.0, abs=1e-5)
    assert index.probability(vectors[1], 1) == pytest.approx(index.probability(vectors[1], 3), abs=1e-4)
    assert (index.probability(vectors[0], 0) or 0.0) > 0.5  # the one-row skill is still found
    # zero rows (all but one of them) and a huge C: nothing to divide by zero
    flat = index_from_vectors(["a", "b"], [], np.array([[0.0, 0.0], [1.0, 0.0]], np.float32), [1, 1],
                              classifier_c=1e6)
    assert flat.weights is not None and np.isfinite(flat.weights).all()
    assert not index_from_vectors([], ["x"], np.zeros((0, 2), np.float32), [], classifier_c=10.0).weights


def reference_confidence(index: SkillIndex, query: Array) -> tuple[int, float]:
    """The top skill by score and mean(score, its probability over every skill), in float64."""
    ids, scores = index.scores(query, aggregation="max", top_k=3, prefilter=0)
    top = int(ids[np.argmax(scores)])
    assert index.weights is not None and index.bias is not None
    p = softmax(index.weights.astype(np.float64) @ query + index.bias)
    return top, 0.5 * (float(scores.max()) + float(p[top]))


@pytest.mark.parametrize("prefilter", [0, 4])
def test_the_zone_is_decided_on_the_mean_of_score_and_probability(prefilter: int) -> None:
    vectors, counts = clusters(20, 5, 24, noise=0.6)
    names = [f"s{i}" for i in range(20)]
    index = index_from_vectors(names, [], vectors, counts, whitening=0.8, classifier_c=10.0)
    config = SemanticRoutingConfig.model_validate({"confidence": "scoreAndProbability", "low": 0.3, "high": 0.45,
                                                   "prefilterSkills": prefilter})
    layer = SemanticLayer(config)
    rng = np.random.default_rng(11)
    zones = set()
    for row in range(0, len(vectors), 3):
        raw = unit_rows(vectors[row:row + 1] + 0.6 * rng.standard_normal((1, 24)))[0]
        query = index.project(raw)
        zone = layer.zone(index, raw)
        top, confidence = reference_confidence(index, query)
        assert zone.candidates[0].skill == names[top]
        assert zone.score == pytest.approx(confidence, abs=1e-5)  # the probability is over all 20 skills
        expected = "high" if confidence > 0.45 else "hint" if confidence >= 0.3 else "low"
        assert zone.zone == expected
        zones.add(zone.zone)
    assert zones == {"high", "hint", "low"}


def test_a_query_between_two_skills_is_less_sure_than_one_near_a_single_skill() -> None:
    vectors = unit_rows(np.array([[1.0, 0.05, 0.0], [1.0, -0.05, 0.0], [0.05, 1.0, 0.0], [-0.05, 1.0, 0.0],
                                  [0.0, 0.05, 1.0], [0.0, -0.05, 1.0]]))
    index = index_from_vectors(["a", "b", "c"], [], vectors, [2, 2, 2], classifier_c=10.0)
    layer = SemanticLayer(SemanticRoutingConfig(confidence="scoreAndProbability"))
    near = layer.zone(index, unit_rows(np.array([[1.0, 0.2, 0.0]]))[0])
    between = layer.zone(index, unit_rows(np.array([[1.0, 0.9, 0.0]]))[0])
    assert near.skill == "a" and near.score > between.score
    assert (index.probability(unit_rows(np.array([[1.0, 0.9, 0.0]]))[0], 0) or 1.0) < 0.6


def test_score_and_lead_ignores_the_classifier_and_an_index_without_one_falls_back_to_it() -> None:
    vectors, counts = clusters(3, 3, 6, noise=0.3)
    fitted = index_from_vectors(["a", "b", "c"], [], vectors, counts, classifier_c=10.0)
    plain = index_from_vectors(["a", "b", "c"], [], vectors, counts)
    lead = SemanticLayer(SemanticRoutingConfig())
    probability = SemanticLayer(SemanticRoutingConfig(confidence="scoreAndProbability"))
    query = unit_rows(vectors[:1] + 0.2)[0]
    expected = lead.zone(plain, query).score
    ranked = sorted(c.score for c in lead.zone(plain, query).candidates)
    assert expected == pytest.approx(min(1.0, 2 * ranked[-1] - ranked[-2]))
    assert lead.zone(fitted, query).score == expected
    assert probability.zone(plain, query).score == expected  # no classifier: the lead
    assert probability.zone(fitted, query).score != expected
    assert index_options(SemanticRoutingConfig())["classifier_c"] is None  # the default fits no classifier
    assert index_options(SemanticRoutingConfig(confidence="scoreAndProbability", classifier_c=3.0)) == {
        "whitening": 0.8, "classifier_c": 3.0}


def routing_spec_schema() -> dict[str, Any]:
    crd = all_crds()["routingpolicies.strata.dev.yaml"]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]  # type: ignore[no-any-return]


def test_the_confidence_fields_round_trip_through_the_crd_into_the_router() -> None:
    semantic = routing_spec_schema()["properties"]["semantic"]["properties"]
    assert semantic["confidence"]["enum"] == ["scoreAndLead", "scoreAndProbability"]
    assert semantic["confidence"]["default"] == SemanticRoutingConfig().confidence == "scoreAndLead"
    assert semantic["classifierC"]["default"] == SemanticRoutingConfig().classifier_c
    document = {"semantic": {"confidence": "scoreAndProbability", "classifierC": 2.5, "low": 0.4, "high": 0.9}}
    schema = jsonschema.Draft4Validator(routing_spec_schema())  # OpenAPI v3's draft: what the apiserver checks
    schema.validate(document)
    for bad in ({"confidence": "lead"}, {"classifierC": 0}):
        with pytest.raises(jsonschema.ValidationError):
            schema.validate({"semantic": bad})
    spec = AgentDeploymentSpec.model_validate({
        "image": "strata-runtime:test", "runtime": {
            "models": [{"name": "m", "provider": "demo"}],
            "agents": [{"id": "support", "tenant": "acme", "model": "m", "skills": [{"name": "refund"}]}]}})
    config = render_runtime_config(Inputs(owner=Owner(name="support", namespace="ns", uid="u"), spec=spec,
                                          api_key_tenants=("acme",),
                                          routing_policy=RoutingPolicySpec.model_validate(document)))
    router = Router(config.routing, None, lambda: None)
    assert router.policy.semantic.confidence == "scoreAndProbability" and router.policy.semantic.classifier_c == 2.5
    assert router.policy.model_dump(mode="json", by_alias=True)["semantic"]["classifierC"] == 2.5
