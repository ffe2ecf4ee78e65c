"""The unit the per-address limits count a client by.

An IPv4 address is one unit; an IPv6 address counts as its /64 network, the smallest
allocation a subscriber gets (a client given a /64 had 2^64 addresses, each with the sign-in
throttle's, the refused-signature budget's, the public rate limits' and the socket limit's
full allowance). An IPv4 address written as IPv6 (`::ffff:203.0.113.9`) is that IPv4 address.
Audit records and API keys' allow-lists keep the full address.
"""

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=65_536)
def address_group(address: str) -> str:
    """`address`, or its IPv6 /64 network in CIDR form; text that is no address as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scope id names no other host
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
