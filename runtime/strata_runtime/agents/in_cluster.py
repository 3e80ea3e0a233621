"""The pod's own access to the Kubernetes API server: its service-account token and CA.

Used by the runtime's few API calls about itself (watching its agent definitions ConfigMap, annotating
its Pod). Only in a pod with ``KUBERNETES_SERVICE_HOST`` and a mounted token; the namespace comes from
``STRATA_POD_NAMESPACE`` (downward API) or the token's namespace file. The token is re-read before
each request (projected tokens rotate); the CA is loaded once, in a thread.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class InClusterApi:
    server: str
    """API server base URL, e.g. https://10.96.0.1:443."""
    namespace: str
    token_file: Path
    ca_file: Path | None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None,
                         account_dir: Path = SERVICE_ACCOUNT_DIR) -> InClusterApi | None:
        """The API server of the pod this process runs in, or None outside a pod or without a token."""
        env = os.environ if env is None else env
        host, token = env.get("KUBERNETES_SERVICE_HOST"), account_dir / "token"
        if not host or not token.is_file():
            return None
        namespace = env.get("STRATA_POD_NAMESPACE") or _read(account_dir / "namespace")
        if not namespace:
            return None
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        ca = account_dir / "ca.crt"
        return cls(f"https://{host}:{port}", namespace, token, ca if ca.is_file() else None)

    async def authorization(self) -> dict[str, str]:
        token = (await asyncio.to_thread(self.token_file.read_text)).strip()
        return {"Authorization": f"Bearer {token}"}

    async def open_client(self, client_timeout: httpx.Timeout | float) -> httpx.AsyncClient:
        """A client that trusts the cluster CA and ignores proxy settings of the environment."""
        ca = str(self.ca_file) if self.ca_file else None
        context = await asyncio.to_thread(ssl.create_default_context, cafile=ca)
        return httpx.AsyncClient(verify=context, timeout=client_timeout, trust_env=False)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
