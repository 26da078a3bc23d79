"""Matrix identifiers: typed names and their grammar (pure).

``UserId`` and ``ServerName`` are ``NewType``s over ``str``; the parsers here
are the only places a wire string becomes one. Grammar from the spec
appendices: ``server_name = hostname [":" port]``, hostname an IPv4 dotted
quad, an IPv6 literal in brackets or a DNS name; user IDs are
``@localpart:server_name`` (historical localparts are accepted, as every
homeserver must).
"""

from __future__ import annotations

import re
from typing import NewType

UserId = NewType("UserId", str)
ServerName = NewType("ServerName", str)
DeviceId = NewType("DeviceId", str)

MAX_USER_ID_LENGTH = 255
# A signing key's version, the part after "ed25519:" in a key ID (spec: keys.yaml).
KEY_VERSION_RE = re.compile(r"[a-zA-Z0-9_]+")

_PORT = r"(?::(?P<port>[0-9]{1,5}))?"
_IPV4 = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
_IPV6 = r"\[[0-9A-Fa-f:.]{2,45}\]"
_DNS = r"[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,253})?"
SERVER_NAME_RE = re.compile(rf"(?P<host>{_IPV4}|{_IPV6}|{_DNS}){_PORT}")
# Historical user IDs may contain any printable ASCII but ':' in the localpart.
LOCALPART_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def parse_server_name(value: str) -> ServerName | None:
    """``value`` as a ServerName, or None if it is not one."""
    match = SERVER_NAME_RE.fullmatch(value)
    if match is None:
        return None
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return None
    return ServerName(value)


def split_server_name(name: ServerName) -> tuple[str, int | None]:
    """(host, port or None) of a valid server name; IPv6 keeps its brackets."""
    match = SERVER_NAME_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"not a server name: {name!r}")
    port = match.group("port")
    return match.group("host"), (int(port) if port is not None else None)


def parse_user_id(value: str) -> tuple[UserId, ServerName] | None:
    """(user_id, its server name) if ``value`` is a valid user ID, else None."""
    if len(value) > MAX_USER_ID_LENGTH or not value.startswith("@"):
        return None
    localpart, sep, server = value[1:].partition(":")
    if not sep or not LOCALPART_RE.fullmatch(localpart):
        return None
    server_name = parse_server_name(server)
    if server_name is None:
        return None
    return UserId(value), server_name
