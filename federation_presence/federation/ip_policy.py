"""Which IP addresses outbound federation may connect to (Synapse's ``ip_range_blacklist``).

Any unauthenticated ``PUT /send`` names an origin, and the worker then fetches
that origin's keys; without a policy that is a request forgery (SSRF) lever
against the worker's own network (``10.0.0.5``, ``169.254.169.254``, ...).
This module owns the decision, pure and synchronous: ``IpPolicy.allows(ip)``.
The connect step (``address_guard.py``) resolves every host itself and asks it
about each address, so a name that resolves to an internal address (or is
rebound to one between lookups) is refused too.

Invariants:

* An address in ``whitelist`` is allowed, whatever ``blacklist`` says (allow
  wins over block, as in Synapse) - except ``0.0.0.0`` and ``::``, which are
  always refused (on Linux they reach the local host).
* An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is judged as the IPv4
  address it maps (``127.0.0.1``); an IPv6 scope (``fe80::1%eth0``) is ignored.
* Anything that is not an IP address is refused (``allows`` never raises).
* ``DEFAULT_IP_RANGE_BLACKLIST`` is Synapse's ``DEFAULT_IP_RANGE_BLOCKLIST``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_IP_RANGE_BLACKLIST: tuple[str, ...] = (
    "127.0.0.0/8",  # loopback
    "10.0.0.0/8",  # private networks
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # carrier-grade NAT
    "192.0.0.0/24",  # IETF protocol assignments
    "169.254.0.0/16",  # link-local (cloud metadata services)
    "192.88.99.0/24",  # formerly 6to4 relay anycast
    "198.18.0.0/15",  # benchmarking
    "192.0.2.0/24",  # documentation
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",  # multicast
    "::1/128",  # loopback
    "fe80::/10",  # link-local
    "fc00::/7",  # unique local
    "2001:db8::/32",  # documentation
    "ff00::/8",  # multicast
    "fec0::/10",  # site-local (deprecated)
)
ALWAYS_BLOCKED: tuple[str, ...] = ("0.0.0.0/32", "::/128")
LOOPBACK_RANGES: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


def ip_range_problem(value: str) -> str | None:
    """Why ``value`` is not a CIDR range or an IP address; None when it is one."""
    try:
        ipaddress.ip_network(value.strip())
    except ValueError as exc:
        return f"must be an IP range like '10.0.0.0/8' or an IP address: {exc}"
    return None


def _networks(ranges: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    out = []
    for value in ranges:
        problem = ip_range_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} {problem}")
        out.append(ipaddress.ip_network(value.strip()))
    return tuple(out)


def _address(ip: str | IpAddress) -> IpAddress | None:
    if isinstance(ip, str):
        try:
            address: IpAddress = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return None
    else:
        address = ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(address.compressed.partition("%")[0])
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def _within(address: IpAddress, networks: tuple[IpNetwork, ...]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


@dataclass(frozen=True, slots=True)
class IpPolicy:
    """Outbound address policy: CIDR strings, validated (``ValueError``) on creation."""

    blacklist: tuple[str, ...] = DEFAULT_IP_RANGE_BLACKLIST
    whitelist: tuple[str, ...] = ()
    _blocked: tuple[IpNetwork, ...] = field(init=False, repr=False, compare=False)
    _allowed: tuple[IpNetwork, ...] = field(init=False, repr=False, compare=False)
    _never: tuple[IpNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_blocked", _networks(self.blacklist))
        object.__setattr__(self, "_allowed", _networks(self.whitelist))
        object.__setattr__(self, "_never", _networks(ALWAYS_BLOCKED))

    @classmethod
    def allow_all(cls) -> IpPolicy:
        """No ranges blocked (only ``0.0.0.0`` and ``::``): trusted test networks."""
        return cls(blacklist=(), whitelist=())

    def allows(self, ip: str | IpAddress) -> bool:
        """May outbound federation connect to ``ip``?"""
        address = _address(ip)
        if address is None or _within(address, self._never):
            return False
        if _within(address, self._allowed):
            return True
        return not _within(address, self._blocked)
