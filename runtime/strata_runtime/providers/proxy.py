"""Forward-proxy settings from the environment, and CONNECT tunnels through such a proxy.

The rules are the ones curl, requests and httpx (so the runtime's embedder client) follow:

* `https_proxy` / `HTTPS_PROXY` for https upstreams, `http_proxy` / `HTTP_PROXY` for http ones,
  `all_proxy` / `ALL_PROXY` for both when the specific one is unset; lower case wins.
* `no_proxy` / `NO_PROXY`: comma-separated entries, each `*` (nothing is proxied), a host name
  that also matches its subdomains (`example.com`, `.example.com`), an IP address, or an IP
  network (`10.0.0.0/8`); an entry may end in `:port` to match only that port.
* The proxy URL is `http://[user:password@]host[:port]` (no scheme means http); the proxy
  itself is reached over plain TCP. An https upstream is reached through a CONNECT tunnel,
  and TLS runs end to end inside it, so the proxy never sees the API key.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class ProxyError(OSError):
    """The proxy refused or broke a CONNECT tunnel (reported as a connect failure)."""


@dataclass(frozen=True)
class ProxyRoute:
    host: str
    port: int
    authorization: bytes = b""  # a pre-encoded `Proxy-Authorization: ...\r\n` line, or nothing


def proxy_for(base_url: str, env: Mapping[str, str]) -> ProxyRoute | None:
    """The proxy to use for `base_url` under the environment's settings, or None for a direct connection."""
    parts = urlsplit(base_url)
    scheme, host = parts.scheme, parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    raw = _setting(env, f"{scheme}_proxy") or _setting(env, "all_proxy")
    if not raw or _bypassed(host, port, _setting(env, "no_proxy") or ""):
        return None
    return parse_proxy_url(raw)


def parse_proxy_url(raw: str) -> ProxyRoute:
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"proxy URL must be http://host[:port] (got scheme {parts.scheme!r})")
    authorization = b""
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Proxy-Authorization: Basic " + base64.b64encode(credentials) + b"\r\n"
    return ProxyRoute(parts.hostname, parts.port or 80, authorization)


def _setting(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name) or env.get(name.upper()) or None


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        if _matches(host, name.strip("[]")):
            return True
    return False


def _has_port(entry: str) -> bool:
    """`host:port` or `[v6]:port`, but not a bare IPv6 address (which is all colons)."""
    if entry.startswith("["):
        return "]:" in entry
    return entry.count(":") == 1


def _matches(host: str, name: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and "/" in name:
        try:
            return address in ipaddress.ip_network(name, strict=False)
        except ValueError:
            return False
    name = name.lstrip(".")
    return host == name or host.endswith("." + name)


class _TunnelReply(asyncio.Protocol):
    """Collects the proxy's answer to CONNECT (a status line and headers, nothing else)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buffer = b""
        self.answered: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.answered.done():
            self.answered.set_result(None)
        elif len(self.buffer) > 16384 and not self.answered.done():
            self.answered.set_exception(ProxyError("proxy answered CONNECT with oversized headers"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ProxyError("proxy closed the connection during CONNECT"))


async def open_tunnel(proxy: ProxyRoute, host: str, port: int, context: ssl.SSLContext) -> asyncio.Transport:
    """A TLS transport to `host:port` through a CONNECT tunnel (the caller sets its protocol)."""
    loop = asyncio.get_running_loop()
    transport, reply = await loop.create_connection(lambda: _TunnelReply(loop), proxy.host, proxy.port)
    try:
        authority = f"{host}:{port}".encode()
        transport.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority, authority, proxy.authorization))
        await reply.answered
        head, _, rest = reply.buffer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or fields[1] != b"200":
            shown = status_line[:80].decode("latin-1")
            raise ProxyError(f"proxy refused CONNECT to {host}:{port}: {shown!r}")
        if rest:
            raise ProxyError("proxy sent bytes before the TLS handshake")
        tls = await loop.start_tls(transport, reply, context, server_hostname=host)
    except BaseException:
        transport.close()
        raise
    if tls is None:  # only when the transport closed during the handshake
        raise ProxyError(f"TLS through the proxy to {host}:{port} failed")
    return tls
