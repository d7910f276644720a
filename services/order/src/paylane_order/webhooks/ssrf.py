"""Where a webhook may go: no private, loopback, link-local or otherwise non-public
address, unless ``WEBHOOK_ALLOW_PRIVATE=true`` (development, which also allows plain
``http://``).

Checked twice: when an endpoint is made (the host resolved, every address checked), and
again at every send, on the addresses the connection is actually made to
(:class:`PublicOnlyResolver`), so a name that resolved to a public address when the
endpoint was made and to an internal one later (DNS rebinding) is still refused. No
redirect is followed and no proxy from the environment is used."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """A webhook URL or the address it resolves to is not allowed."""


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address (an IPv4-mapped IPv6 address is
    judged as the IPv4 address it carries)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: str, *, allow_private: bool) -> str:
    """``url`` if its form is acceptable: ``https://`` (``http://`` too when
    ``allow_private``), a host, no credentials, no fragment; a literal IP address must be
    public unless ``allow_private``. Raises :class:`TargetRefused` saying why."""
    if len(url) > 2048:
        raise TargetRefused("longer than 2048 characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise TargetRefused(f"not a URL: {exc}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise TargetRefused(
            "must be https://"
            + (
                ""
                if allow_private
                else " (http:// only in development, WEBHOOK_ALLOW_PRIVATE=true)"
            )
        )
    if not parts.hostname:
        raise TargetRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("must not carry credentials")
    if parts.fragment:
        raise TargetRefused("must not have a fragment")
    literal = _literal(parts.hostname)
    if literal is not None and not allow_private and not is_public(literal):
        raise TargetRefused(f"{literal} is not a public address")
    return url


async def check_resolves_public(url: str) -> None:
    """Every address ``url``'s host resolves to is public (the check when an endpoint is
    made); raises :class:`TargetRefused`."""
    host = urlsplit(url).hostname or ""
    if _literal(host) is not None:
        return  # check_url judged it
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"host {host!r} does not resolve ({exc.strerror})") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not is_public(address):
            raise TargetRefused(f"host {host!r} resolves to {address}, not a public address")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name any of whose addresses is not public: what a
    send connects to is checked after resolution, not before."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"])
            if not is_public(address):
                raise TargetRefused(f"{host} resolves to {address}, not a public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


def refusal_at_send(url: str, *, allow_private: bool) -> str | None:
    """Why a send to ``url`` is refused before connecting (its form, a literal address,
    which no resolver sees), or None."""
    try:
        check_url(url, allow_private=allow_private)
    except TargetRefused as exc:
        return str(exc)
    return None


def describe_refusal(exc: BaseException) -> str | None:
    """The :class:`TargetRefused` inside what aiohttp raised, as text, or None."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TargetRefused):
            return str(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
