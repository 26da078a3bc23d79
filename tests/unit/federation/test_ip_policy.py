"""``IpPolicy``: which addresses outbound federation may connect to, and its config keys."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.config import parse_config
from federation_presence.errors import ConfigError
from federation_presence.federation.ip_policy import (
    DEFAULT_IP_RANGE_BLACKLIST,
    LOOPBACK_RANGES,
    IpPolicy,
    ip_range_problem,
)

DEFAULT = IpPolicy()
LOOPBACK_ALLOWED = IpPolicy(whitelist=LOOPBACK_RANGES)

# One address inside each range of Synapse's DEFAULT_IP_RANGE_BLOCKLIST, in its order.
INSIDE_EACH_DEFAULT_RANGE = [
    "127.0.0.1",
    "10.0.0.5",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",
    "192.0.0.8",
    "169.254.169.254",
    "192.88.99.1",
    "198.19.0.1",
    "192.0.2.1",
    "198.51.100.7",
    "203.0.113.9",
    "239.255.255.250",
    "::1",
    "fe80::1",
    "fd12:3456:789a::1",
    "2001:db8::1",
    "ff02::1",
    "fec0::1",
]


def test_the_default_blacklist_is_synapses_list_in_its_order() -> None:
    assert len(DEFAULT_IP_RANGE_BLACKLIST) == len(INSIDE_EACH_DEFAULT_RANGE)
    for cidr, ip in zip(DEFAULT_IP_RANGE_BLACKLIST, INSIDE_EACH_DEFAULT_RANGE, strict=True):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


@pytest.mark.parametrize("ip", INSIDE_EACH_DEFAULT_RANGE)
def test_the_default_policy_refuses_internal_addresses(ip: str) -> None:
    assert not DEFAULT.allows(ip)


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "2a00:1450::1"]
)
def test_the_default_policy_allows_public_addresses(ip: str) -> None:
    assert DEFAULT.allows(ip)


@pytest.mark.parametrize(
    ("mapped", "plain"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("::ffff:8.8.8.8", "8.8.8.8"),
    ],
)
def test_an_ipv4_mapped_ipv6_address_is_judged_as_its_ipv4_address(mapped: str, plain: str) -> None:
    for policy in (DEFAULT, LOOPBACK_ALLOWED, IpPolicy(("10.0.0.0/8",), ("10.1.0.0/16",))):
        assert policy.allows(mapped) is policy.allows(plain)
    assert LOOPBACK_ALLOWED.allows("::ffff:127.0.0.1")


@given(st.integers(0, 2**32 - 1))
def test_every_ipv4_address_and_its_mapped_form_get_the_same_answer(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    assert DEFAULT.allows(mapped) is DEFAULT.allows(v4)
    assert DEFAULT.allows(str(mapped)) is DEFAULT.allows(str(v4))


def test_the_whitelist_wins_over_the_blacklist() -> None:
    assert LOOPBACK_ALLOWED.allows("127.0.0.1")
    assert LOOPBACK_ALLOWED.allows("127.8.9.10")
    assert LOOPBACK_ALLOWED.allows("::1")
    assert not LOOPBACK_ALLOWED.allows("10.0.0.1")  # the rest of the blacklist holds
    narrow = IpPolicy(("10.0.0.0/8",), ("10.1.2.3",))
    assert narrow.allows("10.1.2.3")
    assert not narrow.allows("10.1.2.4")


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "::ffff:0.0.0.0"])
def test_the_unspecified_addresses_are_always_refused(ip: str) -> None:
    anything = IpPolicy(blacklist=(), whitelist=("0.0.0.0/0", "::/0"))
    assert not anything.allows(ip)
    assert not IpPolicy.allow_all().allows(ip)


def test_allow_all_blocks_nothing_else() -> None:
    for ip in INSIDE_EACH_DEFAULT_RANGE:
        assert IpPolicy.allow_all().allows(ip)


@pytest.mark.parametrize(
    "value", ["", "localhost", "256.1.1.1", "1.2.3.4:80", "[::1]", "8.8.8.8/32"]
)
def test_what_is_not_an_address_is_refused_without_raising(value: str) -> None:
    assert not DEFAULT.allows(value)
    assert not IpPolicy.allow_all().allows(value)


def test_an_ipv6_scope_does_not_hide_the_address() -> None:
    assert not DEFAULT.allows("fe80::1%eth0")
    assert IpPolicy(("fe80::/10",), ("fe80::/10",)).allows("fe80::1%eth0")


@given(st.ip_addresses())
def test_allows_is_total_and_the_whitelist_always_wins(address: object) -> None:
    assert isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    unspecified = address.is_unspecified or (
        isinstance(address, ipaddress.IPv6Address)
        and address.ipv4_mapped is not None
        and address.ipv4_mapped.is_unspecified
    )
    everything = IpPolicy(DEFAULT_IP_RANGE_BLACKLIST, ("0.0.0.0/0", "::/0"))
    assert everything.allows(address) is not unspecified
    assert isinstance(DEFAULT.allows(address), bool)


def test_a_bad_range_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        IpPolicy(("10.0.0.0/33",))
    assert ip_range_problem("10.0.0.0/8") is None
    assert ip_range_problem("::1") is None
    assert ip_range_problem("10.0.0.1/8") is not None  # host bits set: probably a typo


# --- the config keys ---------------------------------------------------------------


def test_the_config_defaults_to_synapses_blacklist_and_no_whitelist() -> None:
    federation = parse_config(None, "fp.yaml").federation
    assert federation.ip_range_blacklist == DEFAULT_IP_RANGE_BLACKLIST
    assert federation.ip_range_whitelist == ()


def test_the_config_reads_both_lists() -> None:
    data = {
        "federation": {
            "ip_range_blacklist": ["10.0.0.0/8"],
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        }
    }
    federation = parse_config(data, "fp.yaml").federation
    assert federation.ip_range_blacklist == ("10.0.0.0/8",)
    assert federation.ip_range_whitelist == ("127.0.0.0/8", "::1/128")
    assert (
        parse_config(
            {"federation": {"ip_range_blacklist": []}}, "fp.yaml"
        ).federation.ip_range_blacklist
        == ()
    )


@pytest.mark.parametrize("key", ["ip_range_blacklist", "ip_range_whitelist"])
@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-an-ip", "10.0.0.1/8"])
def test_a_bad_range_in_the_config_is_one_line_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"federation": {key: ["127.0.0.0/8", value]}}, "fp.yaml")
    message = str(caught.value)
    assert message.startswith(f"fp.yaml: federation.{key}[1]: must be an IP range")
    assert "\n" not in message
