"""Least privilege for Secrets, proven on the real API server: the operator's service
account reads exactly the Secrets the release grants (by name, or a whole namespace, or through a
namespace owner's RoleBinding) and nothing else; a watch filtered to a granted name is allowed,
an unfiltered list is not.

A second release of the chart (its own name and namespace, no peering, no CRDs) is installed so
that its grants can be checked without changing the release the other operator tests use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operator.fixtures_operator import Kubectl, apply_yaml

pytestmark = pytest.mark.operator

CHART = str(Path(__file__).resolve().parents[2] / "charts" / "strata")


def helm(kubeconfig: str, *args: str) -> None:
    binary = shutil.which("helm")
    if binary is None:
        pytest.fail('helm is not on PATH: eval "$(hack/control-plane.sh env)"', pytrace=False)
    result = subprocess.run([binary, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True,
                            timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


class Grants:
    """A release whose service account may read Secret `openai` of `by_name` and every Secret of
    `whole`; `other` is a namespace it was given nothing in."""

    def __init__(self, kubectl: Kubectl, release: str, by_name: str, whole: str, other: str) -> None:
        self.kubectl, self.release = kubectl, release
        self.by_name, self.whole, self.other = by_name, whole, other
        self.service_account = f"{release}-strata-operator"
        self.user = f"system:serviceaccount:{release}:{self.service_account}"

    def can(self, verb: str, what: str, namespace: str | None) -> str:
        where = ["-n", namespace] if namespace else ["--all-namespaces"]
        result = self.kubectl("auth", "can-i", verb, what, *where, f"--as={self.user}", check=False)
        return result.stdout.strip()

    def get(self, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl("get", "secrets", "-n", namespace, *args, "-o", "name", f"--as={self.user}",
                            check=False)


@pytest.fixture
def grants(kubectl: Kubectl, kubeconfig: str) -> Iterator[Grants]:
    suffix = uuid.uuid4().hex[:6]
    release, by_name, whole, other = (f"{n}-{suffix}" for n in ("rbac", "by-name", "whole", "other"))
    for ns in (release, by_name, whole, other):
        kubectl("create", "namespace", ns)
    for ns in (by_name, whole, other):
        apply_yaml(kubectl, ns, *(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": "v"}}
            for name in ("openai", "unrelated")
        ))
    access = json.dumps({by_name: ["openai"], whole: "*"})
    try:
        helm(kubeconfig, "install", release, CHART, "--namespace", release, "--set", "replicaCount=0",
             "--set", "crds.install=false", "--set", "peering.enabled=false",
             "--set-json", f"secretAccess.namespaces={access}", "--wait", "--timeout", "120s")
        yield Grants(kubectl, release, by_name, whole, other)
    finally:
        helm(kubeconfig, "uninstall", release, "--namespace", release, "--ignore-not-found")
        for ns in (release, by_name, whole, other):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_operator_reads_only_the_secrets_granted_by_name(grants: Grants) -> None:
    assert grants.can("get", "secrets/openai", grants.by_name) == "yes"
    assert grants.can("watch", "secrets/openai", grants.by_name) == "yes"
    assert grants.can("get", "secrets/unrelated", grants.by_name) == "no"
    assert grants.can("list", "secrets", grants.by_name) == "no"
    assert grants.can("watch", "secrets", grants.by_name) == "no"


def test_no_secret_outside_the_granted_namespaces_and_nothing_cluster_wide(grants: Grants) -> None:
    assert grants.can("get", "secrets/openai", grants.other) == "no"
    assert grants.can("get", "secrets/unrelated", grants.other) == "no"
    assert grants.can("get", "secrets/anything", "kube-system") == "no"
    assert grants.can("list", "secrets", None) == "no"
    assert grants.can("watch", "secrets", None) == "no"
    for verb in ("create", "update", "patch", "delete"):
        assert grants.can(verb, "secrets", grants.whole) == "no"


def test_a_whole_namespace_grant_covers_every_secret_of_that_namespace_only(grants: Grants) -> None:
    assert grants.can("get", "secrets/unrelated", grants.whole) == "yes"
    assert grants.can("list", "secrets", grants.whole) == "yes"
    assert grants.can("list", "secrets", grants.other) == "no"


def test_a_list_filtered_to_a_granted_name_is_allowed_an_unfiltered_one_is_not(grants: Grants) -> None:
    """What the operator's code may do with a by-name grant: GET the Secret, or list/watch it with
    fieldSelector metadata.name=<name> (the API server authorizes that as the named resource)."""
    filtered = grants.get(grants.by_name, "--field-selector", "metadata.name=openai")
    assert filtered.returncode == 0, filtered.stderr
    assert filtered.stdout.strip() == "secret/openai"
    assert grants.get(grants.by_name, "openai").returncode == 0
    unfiltered = grants.get(grants.by_name)
    assert unfiltered.returncode != 0 and "forbidden" in unfiltered.stderr.lower()
    other = grants.get(grants.by_name, "unrelated")
    assert other.returncode != 0 and "forbidden" in other.stderr.lower()


def test_a_namespace_owner_can_grant_the_reader_role_without_a_new_release(grants: Grants) -> None:
    assert grants.can("get", "secrets/openai", grants.other) == "no"
    grants.kubectl("-n", grants.other, "create", "rolebinding", "strata-secrets",
                   f"--clusterrole={grants.service_account}-secret-reader",
                   f"--serviceaccount={grants.release}:{grants.service_account}")
    assert grants.can("get", "secrets/openai", grants.other) == "yes"
    assert grants.can("get", "secrets/openai", grants.by_name) == "yes"
    assert grants.can("get", "secrets/unrelated", grants.by_name) == "no"  # still by name there
