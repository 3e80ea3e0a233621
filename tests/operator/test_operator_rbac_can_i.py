"""What the operator's service account may do as the chart installs it, asked of the real API
server with `kubectl auth can-i --as=system:serviceaccount:...`.

With the default values it reads no Secret anywhere (not in its own namespace, not in a tenant
namespace, not in kube-system, no list or watch cluster-wide) and writes none, while it can do
its work (watch AgentDeployments, apply their children). Secret access exists only when the
values ask for it: `secretAccess.clusterWide` grants it everywhere (so the checks below can
tell the two apart), and `watchNamespaces` confines every grant to the listed namespaces.
Grants by name and per namespace are in test_rbac.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.operator.fixtures_operator import Kubectl
from tests.operator.test_rbac import CHART, helm

pytestmark = pytest.mark.operator

SECRET_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


@dataclass
class Release:
    kubectl: Kubectl
    namespace: str
    tenant: str  # a namespace AgentDeployments live in, with a Secret in it
    user: str

    def can(self, verb: str, what: str, namespace: str | None) -> bool:
        where = ["-n", namespace] if namespace else ["--all-namespaces"]
        answer = self.kubectl("auth", "can-i", verb, what, *where, f"--as={self.user}", check=False).stdout.strip()
        assert answer in ("yes", "no"), answer
        return answer == "yes"


Install = Callable[..., Release]


@pytest.fixture
def install(kubectl: Kubectl, kubeconfig: str) -> Iterator[Install]:
    created: list[tuple[str, list[str]]] = []

    def install(*values: str, watch_tenant: bool = False) -> Release:
        suffix = uuid.uuid4().hex[:6]
        name, tenant = f"cani-{suffix}", f"tenant-{suffix}"
        for ns in (name, tenant):
            kubectl("create", "namespace", ns)
        created.append((name, [name, tenant]))
        kubectl("-n", tenant, "create", "secret", "generic", "openai", "--from-literal=k=v")
        extra = ["--set-json", f'watchNamespaces=["{tenant}"]',
                 "--set-json", f'secretAccess.namespaces={{"{tenant}": "*"}}'] if watch_tenant else []
        helm(kubeconfig, "install", name, CHART, "--namespace", name, "--set", "replicaCount=0",
             "--set", "crds.install=false", "--set", "peering.enabled=false", *values, *extra,
             "--wait", "--timeout", "120s")
        return Release(kubectl, name, tenant, f"system:serviceaccount:{name}:{name}-strata-operator")

    yield install
    for release, namespaces in created:
        helm(kubeconfig, "uninstall", release, "--namespace", release, "--ignore-not-found")
        for ns in namespaces:
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_by_default_the_operator_reads_no_secret_anywhere_and_still_does_its_work(install: Install) -> None:
    release: Release = install()
    for namespace in (release.namespace, release.tenant, "kube-system", "default"):
        for verb in SECRET_VERBS:
            assert not release.can(verb, "secrets", namespace), (verb, namespace)
        assert not release.can("get", "secrets/openai", namespace), namespace
    for verb in ("get", "list", "watch"):
        assert not release.can(verb, "secrets", None), verb
    # What it needs to work is there: its custom resources and their children.
    assert release.can("watch", "agentdeployments.strata.dev", None)
    assert release.can("patch", "agentdeployments.strata.dev/status", release.tenant)
    assert release.can("create", "deployments.apps", release.tenant)
    assert release.can("patch", "configmaps", release.tenant)
    assert release.can("delete", "networkpolicies.networking.k8s.io", release.tenant)
    # and nothing beyond it
    assert not release.can("delete", "deployments.apps", release.tenant)
    assert not release.can("create", "pods", release.tenant)
    assert not release.can("impersonate", "serviceaccounts", release.tenant)
    # The runtime pods' RBAC: Roles and RoleBindings, but no grant beyond what it holds itself (no
    # escalate, no bind) except binding the one pod-annotator ClusterRole; it cannot patch pods.
    rbac = "rbac.authorization.k8s.io"
    assert release.can("create", f"roles.{rbac}", release.tenant)
    assert release.can("create", f"rolebindings.{rbac}", release.tenant)
    assert release.can("create", "serviceaccounts", release.tenant)
    annotator = f"{release.namespace}-strata-operator-runtime-pod-annotator"  # <fullname>-runtime-pod-annotator
    assert release.can("bind", f"clusterroles.{rbac}/{annotator}", release.tenant)
    assert not release.can("bind", f"clusterroles.{rbac}/cluster-admin", release.tenant)
    assert not release.can("bind", f"roles.{rbac}", release.tenant)
    assert not release.can("escalate", f"roles.{rbac}", release.tenant)
    assert not release.can("create", f"clusterrolebindings.{rbac}", None)
    assert not release.can("patch", "pods", release.tenant)
    token = release.kubectl("auth", "can-i", "create", "serviceaccounts", "--subresource=token", "-n",
                            release.tenant, f"--as={release.user}", check=False).stdout.strip()
    assert token == "no", token  # it creates ServiceAccounts but cannot mint their tokens


def test_cluster_wide_secret_access_is_an_explicit_opt_in(install: Install) -> None:
    release: Release = install("--set", "secretAccess.clusterWide=true")
    assert release.can("get", "secrets/openai", release.tenant)
    assert release.can("list", "secrets", None)
    for verb in ("create", "update", "patch", "delete"):  # reading only, even then
        assert not release.can(verb, "secrets", release.tenant), verb


def test_watch_namespaces_confine_every_grant_to_them(install: Install) -> None:
    release: Release = install(watch_tenant=True)
    assert release.can("create", "deployments.apps", release.tenant)
    assert release.can("get", "secrets/openai", release.tenant)
    assert not release.can("create", "deployments.apps", "default")
    assert not release.can("watch", "agentdeployments.strata.dev", None)
    assert not release.can("get", "secrets/anything", "kube-system")
    assert not release.can("list", "secrets", None)
    # binding the pod-annotator ClusterRole works from the namespaced Role too, in that namespace only
    annotator = f"clusterroles.rbac.authorization.k8s.io/{release.namespace}-strata-operator-runtime-pod-annotator"
    assert release.can("bind", annotator, release.tenant)
    assert not release.can("bind", annotator, "default")
