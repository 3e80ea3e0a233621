"""kopf handlers: thin wrappers that route every trigger into `Controller`.

Triggers for an AgentDeployment: its own create/update/resume, a periodic operator-wide
sweep (drift repair; no per-object timer, hence no finalizer),
a change of a CachePolicy/RoutingPolicy/Secret it references (found through indexes,
never by scanning), a Deployment it owns changing (status), a child deleted by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf
from pydantic import ValidationError

from strata_operator import status as st
from strata_operator.controller import Controller, Key, Outcome, index_lookup, now
from strata_operator.k8s import ApiError, Kube
from strata_operator.models import API_VERSION, GROUP, VERSION, CachePolicySpec, RoutingPolicySpec
from strata_operator.reconcile import LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY
from strata_operator.settings import OperatorSettings

Obj = dict[str, Any]
AD = (GROUP, VERSION, "agentdeployments")
POLICY_MODELS: dict[str, tuple[str, type[CachePolicySpec] | type[RoutingPolicySpec]]] = {
    "cachepolicies": ("CachePolicy", CachePolicySpec),
    "routingpolicies": ("RoutingPolicy", RoutingPolicySpec),
}
OWNED = {LABEL_MANAGED_BY: MANAGED_BY}
CHILDREN = [
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
]

log = logging.getLogger("strata.operator")


@dataclass(frozen=True)
class Indexes:
    """The kopf indexes every handler receives as keyword arguments."""

    agents: Any
    agents_by_ref: Any
    cache: Any
    routing: Any

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(kwargs["agents"], kwargs["agents_by_ref"], kwargs["cache_policies"], kwargs["routing_policies"])


def _snapshot(body: Any) -> Obj:
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentDeployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "generation": meta.get("generation")},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def _references(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of everything an AgentDeployment spec references; tolerant of invalid specs."""
    refs: list[tuple[str, str]] = []

    def name_of(node: Any) -> str | None:
        return node.get("name") if isinstance(node, Mapping) and isinstance(node.get("name"), str) else None

    for field, kind in (("cachePolicyRef", "CachePolicy"), ("routingPolicyRef", "RoutingPolicy"),
                        ("apiKeysSecretRef", "Secret"), ("internalTokenSecretRef", "Secret")):
        if name := name_of(spec.get(field)):
            refs.append((kind, name))
    stores = spec.get("stores") if isinstance(spec.get("stores"), Mapping) else {}
    for store, field in (("redis", "urlSecretRef"), ("postgres", "dsnSecretRef"), ("milvus", "uriSecretRef"),
                         ("milvus", "tokenSecretRef")):
        node = stores.get(store) if isinstance(stores, Mapping) else None
        if isinstance(node, Mapping) and (name := name_of(node.get(field))):
            refs.append(("Secret", name))
    for env in spec.get("secretEnv") or []:
        if isinstance(env, Mapping) and (name := name_of(env.get("secretKeyRef"))):
            refs.append(("Secret", name))
    return refs


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """Register every handler into `registry` (so tests and the CLI can build their own)."""

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A custom registry has none of kopf's default login handlers: in-cluster or kubeconfig.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(*, settings: kopf.OperatorSettings, memo: Any, **kw: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # events for failures only, not for every success
        settings.watching.server_timeout = operator_settings.watch_server_timeout_seconds
        settings.watching.client_timeout = operator_settings.watch_server_timeout_seconds + 30
        settings.networking.request_timeout = operator_settings.request_timeout_seconds
        settings.networking.connect_timeout = 10
        settings.execution.max_workers = 4
        kube = await Kube.connect(operator_settings.kubeconfig,
                                  discovery_ttl=operator_settings.keda_discovery_ttl_seconds)
        memo["controller"] = Controller(kube)
        # Drift repair: ONE operator-wide task over the live `agents` index. A per-object kopf timer
        # would make kopf put its finalizer on every AgentDeployment, so that none could be deleted
        # (nor its namespace) while the operator is not running.
        memo["resync"] = asyncio.create_task(resync_forever(memo, Indexes.of(kw)), name="strata-resync")

    @kopf.on.cleanup(id="stop_resync", registry=registry)
    async def stop_resync(*, memo: Any, **_: Any) -> None:
        task: asyncio.Task[None] | None = memo.get("resync")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def resync_forever(memo: Any, ix: Indexes) -> None:
        interval = operator_settings.drift_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await resync_once(memo, ix)
            except Exception:  # never let one bad sweep end drift repair for good
                log.exception("drift repair sweep failed")

    async def resync_once(memo: Any, ix: Indexes) -> None:
        controller = controller_of(memo)
        if operator_settings.peering and await controller.kube.outranked(
                operator_settings.peering, operator_settings.priority, operator_settings.namespaces):
            return  # a standby replica: its indexes may be stale, the active one repairs
        keys = list(ix.agents)
        started = time.monotonic()
        for i, key in enumerate(keys):
            # Spread the sweep over half the interval: re-applies never come as a burst.
            spread = operator_settings.drift_interval_seconds / 2 / len(keys)
            await asyncio.sleep(max(0.0, started + i * spread - time.monotonic()))
            await reconcile_by_key(memo, key, ix, force=True)

    operator_settings = settings

    # ---- indexes ---------------------------------------------------------------------------
    @kopf.index(GROUP, VERSION, "cachepolicies", id="cache_policies", registry=registry)
    async def cache_policies(*, name: str, namespace: str | None, spec: Any, meta: Any, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): {"spec": dict(spec), "generation": meta.get("generation")}}

    @kopf.index(GROUP, VERSION, "routingpolicies", id="routing_policies", registry=registry)
    async def routing_policies(*, name: str, namespace: str | None, spec: Any, meta: Any, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): {"spec": dict(spec), "generation": meta.get("generation")}}

    @kopf.index(*AD, id="agents", registry=registry)
    async def agents(*, body: Any, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): _snapshot(body)}

    @kopf.index(*AD, id="agents_by_ref", registry=registry)
    async def agents_by_ref(*, name: str, namespace: str | None, spec: Any, **_: Any) -> dict[Any, Any]:
        return {(namespace, kind, ref): name for kind, ref in _references(spec)}

    def controller_of(memo: Any) -> Controller:
        controller: Controller = memo["controller"]
        return controller

    async def run(memo: Any, body: Obj, ix: Indexes, *, force: bool = False) -> Outcome:
        controller = controller_of(memo)
        try:
            outcome = await controller.reconcile_agent(body, index_lookup(ix.cache), index_lookup(ix.routing),
                                                       force=force)
        except ApiError as e:
            kopf.warn(cast(kopf.Body, body), reason="ApplyFailed", message=str(e))
            raise kopf.TemporaryError(f"applying the rendered objects failed: {e}", delay=5) from e
        if outcome.error and outcome.new_error:
            kopf.warn(cast(kopf.Body, body), reason=outcome.error.reason, message=outcome.error.message)
        return outcome

    async def reconcile_by_key(memo: Any, key: Key, ix: Indexes, *, force: bool = False) -> None:
        for body in ix.agents.get(key) or []:
            try:
                await run(memo, dict(body), ix, force=force)
            except kopf.TemporaryError as e:
                log.warning("reconciling %s/%s failed: %s", key[0], key[1], e)

    # ---- the AgentDeployment itself --------------------------------------------------------
    @kopf.on.resume(*AD, id="agent_changed", registry=registry)
    @kopf.on.create(*AD, id="agent_changed", registry=registry)
    @kopf.on.update(*AD, field="spec", id="agent_changed", registry=registry)
    async def agent_changed(*, body: Any, memo: Any, **kw: Any) -> None:
        await run(memo, _snapshot(body), Indexes.of(kw))

    @kopf.on.delete(*AD, optional=True, id="agent_deleted", registry=registry)
    async def agent_deleted(*, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
        # No finalizer (optional=True): owner references make the garbage collector delete children.
        controller_of(memo).forget((str(namespace), name))

    # ---- what it depends on ----------------------------------------------------------------
    async def policy_event(kind_plural: str, event: Any, body: Any, memo: Any, ix: Indexes) -> None:
        kind, model = POLICY_MODELS[kind_plural]
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        gone = event.get("type") == "DELETED"
        version = None if gone else str(meta.get("generation"))
        controller = controller_of(memo)
        if not gone:
            error = None
            try:
                model.model_validate(dict(body.get("spec") or {}))
            except ValidationError as e:
                error = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            previous = dict(body.get("status") or {})
            new = st.policy_status(generation=int(meta.get("generation") or 0), previous=previous, now=now(),
                                   error=error)
            if st.changed(previous, new):
                await controller.kube.patch_status(API_VERSION, kind, namespace, name, new)
        for agent in ix.agents_by_ref.get((namespace, kind, name)) or []:
            if controller.depends_on((namespace, agent), (kind, name), version):
                await reconcile_by_key(memo, (namespace, agent), ix)

    @kopf.on.event(GROUP, VERSION, "cachepolicies", id="cache_policy_event", registry=registry)
    async def cache_policy_event(*, event: Any, body: Any, memo: Any, **kw: Any) -> None:
        await policy_event("cachepolicies", event, body, memo, Indexes.of(kw))

    @kopf.on.event(GROUP, VERSION, "routingpolicies", id="routing_policy_event", registry=registry)
    async def routing_policy_event(*, event: Any, body: Any, memo: Any, **kw: Any) -> None:
        await policy_event("routingpolicies", event, body, memo, Indexes.of(kw))

    @kopf.on.event("", "v1", "secrets", id="secret_event", registry=registry)
    async def secret_event(*, event: Any, name: str, namespace: str | None, meta: Any, memo: Any,
                           **kw: Any) -> None:
        ix = Indexes.of(kw)
        users = ix.agents_by_ref.get((namespace, "Secret", name))
        if not users:
            return
        version = None if event.get("type") == "DELETED" else str(meta.get("resourceVersion"))
        controller = controller_of(memo)
        for agent in users:
            if controller.depends_on((str(namespace), agent), ("Secret", name), version):
                await reconcile_by_key(memo, (str(namespace), agent), ix)

    # ---- what it owns ----------------------------------------------------------------------
    @kopf.on.event("apps", "v1", "deployments", labels=OWNED, id="deployment_event", registry=registry)
    async def deployment_event(*, event: Any, body: Any, namespace: str | None, memo: Any, **kw: Any) -> None:
        ix = Indexes.of(kw)
        owner = (body["metadata"].get("labels") or {}).get(LABEL_OWNER)
        if not owner:
            return
        key = (str(namespace), owner)
        if event.get("type") == "DELETED":
            await reconcile_by_key(memo, key, ix, force=True)  # deleted by hand: re-create it
            return
        for snapshot in ix.agents.get(key) or []:
            await controller_of(memo).observe_deployment(key, dict(body), snapshot.get("status") or {})

    for group, version, plural in CHILDREN:
        @kopf.on.event(group, version, plural, labels=OWNED, id=f"child-{plural}", registry=registry)
        async def child_event(*, event: Any, body: Any, namespace: str | None, memo: Any, **kw: Any) -> None:
            owner = (body["metadata"].get("labels") or {}).get(LABEL_OWNER)
            if owner and event.get("type") == "DELETED":
                await reconcile_by_key(memo, (str(namespace), owner), Indexes.of(kw), force=True)

