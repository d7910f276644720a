"""The paying client's IP for H5 orders (WeChat's ``scene_info.payer_client_ip``).

``X-Forwarded-For`` is anyone's to write: it is believed only when the direct peer is a
configured trusted proxy (``TRUSTED_PROXIES``), and then only up to the first hop that is
not itself trusted, walking from the right (the hops our proxies appended). Otherwise the
client is the direct peer.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, Any

from aiohttp import web
from pydantic import BeforeValidator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Network = IPv4Network | IPv6Network


def _split(value: Any) -> Any:
    """``"10.0.0.0/8, 192.168.1.1"`` → networks (a bare address is a /32 or /128)."""
    if isinstance(value, str):
        return tuple(ip_network(part.strip()) for part in value.split(",") if part.strip())
    return value


#: A setting: comma-separated CIDRs or addresses; host bits set is an error.
TrustedProxies = Annotated[tuple[Network, ...], NoDecode, BeforeValidator(_split)]


class TrustedProxySettings(BaseSettings):
    """Mixin: ``TRUSTED_PROXIES``, the proxies whose ``X-Forwarded-For`` is believed
    (default none: the direct peer is the client)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)
    #: Comma-separated CIDRs (or addresses) of the proxies in front of the order service:
    #: an H5 order's payer IP (and the login rate limit's address) comes from
    #: ``X-Forwarded-For`` only when the direct peer is one of them (the right-most hop not
    #: itself trusted); else the peer's address. Empty: ``X-Forwarded-For`` never trusted.
    trusted_proxies: TrustedProxies = ()


def _trusted(address: IPv4Address | IPv6Address, networks: tuple[Network, ...]) -> bool:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def resolve_client_ip(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[Network, ...]
) -> str | None:
    """The client's address given the direct ``peer`` and the ``X-Forwarded-For`` values."""
    if peer is None or not trusted:
        return peer
    try:
        nearest = ip_address(peer)
    except ValueError:  # a unix socket or the like: nothing to trust
        return peer
    if not _trusted(nearest, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        try:
            address = ip_address(hop)
        except ValueError:  # garbage (or host:port): stop at the last hop we could read
            break
        nearest = address
        if not _trusted(address, trusted):
            break
    return str(nearest)


def client_ip(request: web.Request, trusted: tuple[Network, ...]) -> str | None:
    """The client's address for ``request`` when ``trusted`` are the trusted proxies."""
    return resolve_client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
