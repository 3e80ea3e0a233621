"""The SSRF guard of the http executor: which addresses a tool may reach.

A URL's host is resolved once, every address it resolves to is checked, and the request is
then sent to the checked address (the host name goes in `Host` and TLS SNI), so a DNS answer
that changes between the check and the connection (DNS rebinding) cannot slip through.
Refused unless the tool lists the host in `allowHosts`: loopback, private (RFC 1918, ULA),
link-local (incl. the 169.254.169.254 metadata address), carrier-grade NAT, unspecified,
multicast and reserved ranges, and IPv4-mapped IPv6 forms of all of them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection
from dataclasses import dataclass

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class SsrfRefused(Exception):
    """The URL's host is, or resolves to, an address tools may not reach."""


@dataclass(frozen=True)
class Resolved:
    host: str  # as written in the URL (for Host / SNI)
    address: str  # the checked address to connect to


def is_internal(address: IpAddress) -> bool:
    """True for every address a tool must not reach unless allowed explicitly."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_internal(address.ipv4_mapped)
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
        or (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT)
    )


def _literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve_checked(host: str, port: int, allow_hosts: Collection[str]) -> Resolved:
    """The address to connect to for `host`, or SsrfRefused. Allowed hosts skip the check."""
    if not host:
        raise SsrfRefused("the URL has no host")
    allowed = host.lower() in allow_hosts
    literal = _literal(host)
    if literal is not None:
        if not allowed and is_internal(literal):
            raise SsrfRefused(f"{host} is an internal address")
        return Resolved(host, str(literal))
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConnectionError(f"cannot resolve {host}") from e
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise ConnectionError(f"cannot resolve {host}")
    if not allowed:
        bad = next((a for a in addresses if is_internal(a)), None)
        if bad is not None:
            raise SsrfRefused(f"{host} resolves to an internal address")
    return Resolved(host, str(addresses[0]))
