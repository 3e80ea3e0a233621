"""The ACL scope of a call is part of every cache key and semantic partition, under every scope."""

from __future__ import annotations

import pytest

from strata_runtime.cache.keys import namespace, request_keys
from strata_runtime.gateway.contract import CallContext

BODY = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "budget?"}]}


@pytest.mark.parametrize("scope", ["tenant", "user", "shared"])
def test_calls_with_different_acl_scopes_never_share_a_key_or_a_partition(scope: str) -> None:
    keys = []
    for acl in ("group:hr", "group:sales", None):
        ns = namespace(CallContext(tenant="acme", user="u1", acl_scope=acl), scope)
        assert ns is not None
        keys.append(request_keys(BODY, ns))
    assert len({k.exact for k in keys}) == 3
    assert len({k.fingerprint for k in keys}) == 3


def test_the_same_acl_scope_shares_within_a_tenant_only() -> None:
    def keys(tenant: str) -> str:
        ns = namespace(CallContext(tenant=tenant, acl_scope="group:hr"), "tenant")
        assert ns is not None
        return request_keys(BODY, ns).exact

    assert keys("acme") == keys("acme")
    assert keys("acme") != keys("globex")
