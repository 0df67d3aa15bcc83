"""Who the client is, network-wise: its IP address and whether it came over HTTPS.

By default the client is the TCP peer. Behind a reverse proxy (an ingress) the peer is the
proxy, so when the peer is in GATEHOUSE_TRUSTED_PROXIES (CIDRs) the `X-Forwarded-For` chain is
read from the right: each hop a trusted proxy appended is skipped, and the first address not in
a trusted range is the client. Anything left of it was written by the client itself and is
never believed. A hop that is not an IP address ends the walk: the last trusted hop before it
is taken as the client.

    addresses = ClientAddresses(parse_trusted_proxies("10.0.0.0/8"))
    addresses.client_ip(scope)        # "203.0.113.7"
    addresses.client_key(scope)       # "203.0.113.7"; an IPv6 address's /64: "2001:db8::/64"
    addresses.forwarded_proto(scope)  # "https", "http", or None (peer not trusted, no header)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import Scope

from services.foundation.client_address import client_ip_key

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Hops read at most, from the right; a longer chain is cut (the header is client-controlled).
MAX_FORWARDED_HOPS = 32
_FORWARDED_FOR = b"x-forwarded-for"
_FORWARDED_PROTO = b"x-forwarded-proto"
_PROTOS = frozenset({"http", "https"})


def parse_trusted_proxies(raw: str | Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses), comma-separated or as a sequence; ValueError names a bad one."""
    items = raw.split(",") if isinstance(raw, str) else raw
    networks = []
    for item in (item.strip() for item in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR such as 10.0.0.0/8 or fd00::/8") from None
    return tuple(networks)


class ClientAddresses:
    def __init__(self, trusted_proxies: Sequence[Network]) -> None:
        self._trusted = tuple(trusted_proxies)

    def client_ip(self, scope: Scope) -> str:
        """The client's IP address as text; "" when the server did not say who the peer is
        (a Unix socket, say)."""
        peer = _peer(scope)
        if peer is None:
            return ""
        if not self._is_trusted(peer):
            return str(peer)
        client = peer
        for hop in reversed(_header_values(scope, _FORWARDED_FOR)[-MAX_FORWARDED_HOPS:]):
            address = _address(hop)
            if address is None:
                break
            client = address
            if not self._is_trusted(address):
                break
        return str(client)

    def client_key(self, scope: Scope) -> str:
        """What per-client limits count the client by: its IPv4 address, or its IPv6 /64
        (services/foundation/client_address.py); "" when there is no address."""
        address = self.client_ip(scope)
        return client_ip_key(address) or address

    def forwarded_proto(self, scope: Scope) -> str | None:
        """ "https" or "http" as a trusted proxy's `X-Forwarded-Proto` says (the right-most
        value: the one the proxy next to us set), else None: no trusted proxy said."""
        peer = _peer(scope)
        if peer is None or not self._is_trusted(peer):
            return None
        values = _header_values(scope, _FORWARDED_PROTO)
        if not values:
            return None
        proto = values[-1].lower()
        return proto if proto in _PROTOS else None

    def forwarded_https(self, scope: Scope) -> bool | None:
        """Whether a trusted proxy says the client came over HTTPS; None when none said."""
        proto = self.forwarded_proto(scope)
        return None if proto is None else proto == "https"

    def _is_trusted(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._trusted)


def _peer(scope: Scope) -> Address | None:
    client = scope.get("client")
    if not client:
        return None
    return _address(str(client[0]))


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "198.51.100.7:1234"
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _header_values(scope: Scope, name: bytes) -> list[str]:
    """Every comma-separated value of every `name` header, in order."""
    values: list[str] = []
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            values.extend(part.strip() for part in value.decode("latin-1").split(","))
    return [value for value in values if value]
