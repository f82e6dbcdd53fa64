"""Who is asking: the client address behind trusted proxies, blocked networks, and a rate limit.

A forwarded-for header is believed only when the connection comes from ``IMAGINE_TRUSTED_PROXIES``,
and then only up to the first hop that is not itself a trusted proxy: whatever a client writes
into the header itself sits to the left of that hop and is never read.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.settings import IPNetwork, ipv4_unmapped

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: An IPv6 client usually holds a whole /64; quotas and rate limits count the /64 as one user.
IPV6_USER_PREFIX = 64
_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Client:
    address: str  # the client's IP address ("unknown" when the transport gives none)
    user_id: str  # web:<ipv4>, or web:<ipv6 /64 network>
    blocked: bool


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it: ``203.0.113.9``, ``203.0.113.9:443``, ``[2001:db8::1]:443``."""
    text = text.strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if text.startswith("["):
            host = text[1 : text.find("]")] if "]" in text else ""
        elif text.count(":") == 1:
            host = text.split(":", 1)[0]
        else:
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def user_for(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv4Address) or address.is_loopback:
        return f"web:{address}"
    network = ipaddress.IPv6Network((address, IPV6_USER_PREFIX), strict=False)
    return f"web:{network}"


class ClientResolver:
    """Turns a connection's peer address and forwarded-for headers into a :class:`Client`."""

    def __init__(self, *, trusted_proxies: Sequence[IPNetwork], blocked: Sequence[IPNetwork]) -> None:
        # Addresses are matched as IPv4 wherever they are IPv4-mapped: the networks must be too.
        self.trusted_proxies = tuple(ipv4_unmapped(network) for network in trusted_proxies)
        self.blocked = tuple(ipv4_unmapped(network) for network in blocked)
        self._cache: dict[tuple[str | None, str], Client] = {}

    def resolve(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> Client:
        joined = ",".join(forwarded_for) if forwarded_for else ""
        key = (peer, joined)
        client = self._cache.get(key)
        if client is None:
            client = self._resolve(peer, joined)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = client
        return client

    def _resolve(self, peer: str | None, forwarded_for: str) -> Client:
        address = parse_address(peer) if peer else None
        if address is None:
            return Client("unknown", "web:unknown", False)
        if forwarded_for and self._is_trusted(address):
            for hop in reversed(forwarded_for.split(",")):
                hop_address = parse_address(hop)
                if hop_address is None:
                    break  # a trusted proxy passed on garbage: stop at the last address we can vouch for
                address = hop_address
                if not self._is_trusted(hop_address):
                    break
        blocked = any(address in network for network in self.blocked)
        return Client(str(address), user_for(address), blocked)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted_proxies)


class RateLimiter:
    """A token bucket per client: ``burst`` requests at once, then ``rate`` per second."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, list[float]] = {}

    def take(self, key: str) -> float:
        """0 when the request may go ahead (and it is counted), else the seconds until one may."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._prune(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget clients whose bucket has filled up again; if that is not enough, the older half."""
        self._buckets = {
            k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * self.rate < self.burst
        }
        if len(self._buckets) >= self.max_clients:
            keep = sorted(self._buckets.items(), key=lambda item: item[1][1])[len(self._buckets) // 2 :]
            self._buckets = dict(keep)
