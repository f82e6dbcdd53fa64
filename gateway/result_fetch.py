"""Where the gateway may fetch a hosted backend's result images from, and how.

Only over https, from the hosted backend's delivery hosts (and their subdomains), at the default
port, without credentials; the name is resolved here and every address it has must be public
(no loopback, private, link-local, multicast or reserved address, nor one hidden inside IPv6),
and the caller connects to the checked address itself, so DNS cannot change the answer between
the check and the connection. Bodies are read with a size cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from gateway.cog import safe_reason
from gateway.errors import BackendError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 3


class RefusedURL(Exception):
    """A result URL the gateway will not fetch; the message says why, for the operator's log."""


@dataclass(frozen=True)
class LoopbackDelivery:
    """Tests only; the CLI never makes one. It mocks what cannot run here: public DNS and TLS.

    The delivery hosts' names are taken to resolve to 127.0.0.1 and are spoken to over plain
    HTTP on ``port`` (the fake's). Every other rule still holds for the URL as Replicate gave it:
    https, a delivery host, the default port, no credentials, redirects only within the hosts.
    """

    port: int


def check_result_url(url: httpx.URL, hosts: Sequence[str]) -> str:
    """The URL's host name if the URL may be fetched at all (before any DNS); else :class:`RefusedURL`."""
    if url.scheme != "https":
        raise RefusedURL("it is not https")
    if url.userinfo:
        raise RefusedURL("it carries credentials")
    host = url.raw_host.decode("ascii", "replace").lower().rstrip(".")
    if not any(host == allowed or host.endswith(f".{allowed}") for allowed in hosts):
        raise RefusedURL(f"{safe_reason(host, 60)} is not one of Replicate's delivery hosts")
    if url.port is not None:
        raise RefusedURL("it names a port other than https's")
    return host


async def public_address(host: str) -> str:
    """One address of ``host``, resolved here; every address it has must be public.

    The caller connects to this address itself, so the name cannot resolve to something else
    between the check and the connection (DNS rebinding).
    """
    unresolved = "could not fetch the image from Replicate (its host name did not resolve)"
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise BackendError(unresolved) from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise BackendError(unresolved)
    for address in addresses:
        if not is_public_address(address):
            raise RefusedURL(f"{safe_reason(host, 60)} resolves to a non-public address")
    return addresses[0]


def is_public_address(address: str) -> bool:
    """Not loopback, private, link-local, multicast, reserved or shared, nor one of those inside IPv6."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None and not is_public_address(str(embedded)):
            return False
        if ip.teredo is not None:
            return False
    return ip.is_global and not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def read_capped(response: httpx.Response) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_IMAGE_BYTES:
        raise BackendError("an image from Replicate was larger than 20 MB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_IMAGE_BYTES:
            raise BackendError("an image from Replicate was larger than 20 MB")
        chunks.append(chunk)
    return b"".join(chunks)


def shown_url(url: str) -> str:
    """A result URL for a log line: no credentials, no query (signed URLs carry tokens there), short."""
    try:
        parsed = httpx.URL(url)
        return safe_reason(str(parsed.copy_with(userinfo=b"", query=None, fragment=None)), 120)
    except (httpx.InvalidURL, TypeError):
        return "(an invalid URL)"
