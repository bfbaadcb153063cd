"""End-user sources: an end user's address as the keyed hash the guards compare (`client.ip_hash`), never kept raw."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

# the header an app's backend sets on a single-event request: the address of the end user it acts for
END_USER_IP_HEADER = "X-Alignloop-End-User-IP"
IPV6_PREFIX = 64  # one IPv6 subscriber gets a /64 and rotates addresses inside it (RFC 4941)


def parse_end_user_ip(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Network:
    """The source an address stands for: an IPv4 address, or the /64 an IPv6 address lies in. ValueError if none."""
    if not isinstance(value, str) or not 2 <= len(value) <= 64:
        raise ValueError("must be an IPv4 or IPv6 address as a string")
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False)
    return ip


def source_hash(key: bytes, address: str) -> str:
    """`client.ip_hash` for an end user's address: HMAC-SHA256 under `key` (32 hex). ValueError for a non-address."""
    source = parse_end_user_ip(address)
    return hmac.new(key, b"ip\x00" + str(source).encode(), hashlib.sha256).hexdigest()[:32]
