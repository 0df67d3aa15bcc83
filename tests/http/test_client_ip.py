"""The client IP and scheme the HTTP tier believes: the TCP peer, or what trusted proxies say."""

from __future__ import annotations

import pytest

from services.http.client_ip import ClientAddresses, parse_trusted_proxies

INGRESS = parse_trusted_proxies("10.0.0.0/8, fd00::/8")


def scope(peer: str | None, **headers: str | list[str]) -> dict[str, object]:
    raw: list[tuple[bytes, bytes]] = []
    for name, values in headers.items():
        for value in [values] if isinstance(values, str) else values:
            raw.append((name.replace("_", "-").encode(), value.encode()))
    return {"type": "http", "client": (peer, 50000) if peer else None, "headers": raw}


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # No proxy trusted for this peer: the header is the client's own words.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        # The ingress appended the real peer; what the client wrote left of it is ignored.
        ("10.1.2.3", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        # Two trusted hops: the right-most untrusted address.
        ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9", "198.51.100.1"),
        # Only trusted hops: the left-most of them.
        ("10.1.2.3", "10.7.7.7, 10.8.8.8", "10.7.7.7"),
        # A hop that is no address ends the walk at the trusted hop right of it.
        ("10.1.2.3", "198.51.100.1, junk, 10.8.8.8", "10.8.8.8"),
        ("10.1.2.3", "", "10.1.2.3"),
        ("fd00::5", "2001:db8::7", "2001:db8::7"),
        ("10.1.2.3", "[2001:db8::7]:4711", "2001:db8::7"),
        ("10.1.2.3", "198.51.100.1:4711", "198.51.100.1"),
    ],
)
def test_client_ip(peer: str, forwarded_for: str, client: str) -> None:
    addresses = ClientAddresses(INGRESS)
    assert addresses.client_ip(scope(peer, x_forwarded_for=forwarded_for)) == client


def test_several_forwarded_for_headers_read_as_one_chain() -> None:
    addresses = ClientAddresses(INGRESS)
    request = scope("10.1.2.3", x_forwarded_for=["6.6.6.6", "198.51.100.1, 10.9.9.9"])
    assert addresses.client_ip(request) == "198.51.100.1"


def test_a_long_chain_is_cut_not_walked() -> None:
    addresses = ClientAddresses(INGRESS)
    chain = ", ".join(["10.0.0.1"] * 5000)
    assert addresses.client_ip(scope("10.1.2.3", x_forwarded_for=chain)) == "10.0.0.1"


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    addresses = ClientAddresses(())
    assert addresses.client_ip(scope("10.1.2.3", x_forwarded_for="198.51.100.1")) == "10.1.2.3"
    assert addresses.client_ip(scope(None)) == ""


@pytest.mark.parametrize(
    ("peer", "proto", "believed"),
    [
        ("10.1.2.3", "https", "https"),
        ("10.1.2.3", "HTTP", "http"),
        ("10.1.2.3", "http, https", "https"),  # the value the proxy next to us set
        ("10.1.2.3", "gopher", None),
        ("203.0.113.9", "https", None),  # not a trusted proxy
    ],
)
def test_forwarded_proto(peer: str, proto: str, believed: str | None) -> None:
    addresses = ClientAddresses(INGRESS)
    assert addresses.forwarded_proto(scope(peer, x_forwarded_proto=proto)) == believed


def test_forwarded_proto_without_the_header_is_none() -> None:
    assert ClientAddresses(INGRESS).forwarded_proto(scope("10.1.2.3")) is None


def test_bad_cidrs_are_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_trusted_proxies("10.0.0.0/8,10.0.0.0/33")


def test_per_client_limits_count_an_ipv6_client_by_its_64() -> None:
    """One subscriber holds a whole /64: counted by single addresses, it would have 2^64."""
    addresses = ClientAddresses(())
    first = addresses.client_key(scope("2001:db8:1:2::5"))
    assert first == addresses.client_key(scope("2001:db8:1:2:ffff::9")) == "2001:db8:1:2::/64"
    assert addresses.client_key(scope("2001:db8:1:3::5")) != first
    assert addresses.client_key(scope("198.51.100.7")) == "198.51.100.7"
