"""What a client IP is counted by: the login throttle (from the `client_ip` the HTTP tier sends)
and the HTTP tier's own per-client limits (picture uploads in progress).

IPv4 addresses are keyed as they are. IPv6 ones are keyed by their /64 (one subscriber usually
holds a whole /64, so single addresses would give them 2^64 fresh keys), except those that
carry an IPv4 address (IPv4-mapped and -translated, NAT64's 64:ff9b::/96, IPv4-compatible,
6to4, Teredo): they are keyed by that IPv4 address, so that all IPv4 clients behind one NAT64
gateway or Teredo server do not share one /64 key.

A caller that sent no client IP, or no valid one (an HTTP tier older than the throttle, or a
bug), is keyed as NO_CLIENT_IP: one real key with the IP limits, so the limits never turn off.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

IPV6_PREFIX = 64
# What an IPv6 key's site is: the prefix one customer or one hosting tenant usually holds.
IPV6_SITE_PREFIX = 48
NO_CLIENT_IP = "unknown"
INVALID_CLIENT_IP = "invalid"
_MAX_IP_TEXT = 64
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_LOW_32_BITS = 0xFFFF_FFFF


@dataclass(frozen=True)
class ClientAddress:
    """`shown`: the address as logged (normalised; NO_CLIENT_IP or INVALID_CLIENT_IP when
    there is none); `key`: what the IP limits count it by."""

    shown: str
    key: str

    @property
    def valid(self) -> bool:
        return self.shown not in (NO_CLIENT_IP, INVALID_CLIENT_IP)

    @property
    def for_log(self) -> str:
        return self.shown if self.shown == self.key else f"{self.shown} (IP key {self.key})"


def client_address(raw: str) -> ClientAddress:
    if not raw:
        return ClientAddress(NO_CLIENT_IP, NO_CLIENT_IP)
    address = _parse(raw)
    if address is None:
        return ClientAddress(INVALID_CLIENT_IP, NO_CLIENT_IP)
    return ClientAddress(str(address), _key(address))


def client_ip_key(raw: str) -> str | None:
    """The key of a valid client IP; None when absent or not an IP."""
    address = _parse(raw)
    return None if address is None else _key(address)


@functools.lru_cache(maxsize=4096)  # the hash turns rank every queued client at each turn
def site_of(key: str) -> str:
    """The site of a client key: an IPv6 /64 key's /48, any other key itself. Whoever holds a
    /48 has 65,536 fresh /64 keys; counted by site, they are one."""
    if "/" not in key:
        return key
    try:
        network = ipaddress.IPv6Network(key)
    except ValueError:
        return key
    if network.prefixlen <= IPV6_SITE_PREFIX:
        return key
    return str(network.supernet(new_prefix=IPV6_SITE_PREFIX))


def _parse(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not raw or len(raw) > _MAX_IP_TEXT:
        return None
    try:
        return ipaddress.ip_address(raw.strip())
    except ValueError:
        return None


def _key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return str(embedded)
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(address) & _LOW_32_BITS)
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # not :: nor ::1
        return ipaddress.IPv4Address(int(address) & _LOW_32_BITS)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's own (public) address
    return None
