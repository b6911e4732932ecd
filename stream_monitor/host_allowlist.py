"""Which ``Host`` header values a listener answers (``api.allowed_hosts``).

A browser on an attacker's page can reach a server on this machine's loopback by DNS
rebinding: ``evil.example`` first resolves to the attacker, then to 127.0.0.1, and the page's
same-origin requests land here carrying ``Host: evil.example``. Answering only the names this
service is really reached by defeats that, whatever the token (the page cannot read the
token, but with none set it could read everything). An IP literal in ``Host`` cannot come
from rebinding (the page's origin would be that IP), which is why networks may be listed.

Entries (case-insensitive): a host name (``stream-monitor``, ``localhost``), an IPv4 address,
an IPv6 address in brackets (``[::1]``), each optionally with ``:port`` (without one, any port
matches); a network in CIDR form (``10.0.0.0/8``: any IP literal in it, any port); or ``*``
(any host: only behind a proxy that checks ``Host`` itself).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# RFC 1123 labels plus "_" (Compose service names may carry one); IPv4 literals fit too.
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})


@dataclass(frozen=True)
class _Pattern:
    host: str | None = None  # normalised name or address; None for a network or "*"
    port: int | None = None  # None: any port
    network: IPNetwork | None = None
    any_host: bool = False

    def matches(self, host: str, port: int | None) -> bool:
        if self.any_host:
            return True
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        return host == self.host and (self.port is None or self.port == port)


def _port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _host(text: str) -> str:
    """A normalised host: lower case, no trailing dot, IP literals in canonical form."""
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad host name {text!r}")
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        return name


def split_host(value: str) -> tuple[str, int | None]:
    """``(host, port)`` of a ``Host`` header value (RFC 9110 §7.2: ``uri-host [":" port]``),
    normalised as the allow-list's entries are; ValueError when it is malformed."""
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad IPv6 host {value!r}")
        host = str(ipaddress.IPv6Address(inside))  # ValueError when not an IPv6 address
        return host, _port(rest[1:]) if rest else None
    name, colon, port = value.partition(":")
    return _host(name), _port(port) if colon else None


def parse_entry(entry: str) -> _Pattern:
    """One ``api.allowed_hosts`` entry (see the module docstring); ValueError naming it when bad."""
    text = entry.strip()
    try:
        if text == "*":
            return _Pattern(any_host=True)
        if "/" in text:
            return _Pattern(network=ipaddress.ip_network(text, strict=False))
        if text.count(":") > 1 and not text.startswith("["):  # a bare IPv6 address
            return _Pattern(host=str(ipaddress.IPv6Address(text)))
        host, port = split_host(text)
        return _Pattern(host=host, port=port)
    except ValueError as exc:
        raise ValueError(f"allowed_hosts entry {entry!r}: {exc}") from None


def check_entry(entry: str) -> str:
    """``entry`` itself when :func:`parse_entry` takes it (a pydantic after-validator)."""
    parse_entry(entry)
    return entry


class HostAllowList:
    """The ``Host`` values one listener answers: :meth:`allows` is the whole contract."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = list(entries)
        self._patterns = [parse_entry(e) for e in self.entries]

    @classmethod
    def for_listener(cls, entries: Iterable[str], bind_host: str) -> "HostAllowList":
        """``entries`` plus the listener's own bind address when it names one (not a wildcard
        such as ``0.0.0.0``): a client that dials that address is never a rebinding page."""
        listed = list(entries)
        bind = bind_host.strip()
        if bind.lower() not in _WILDCARD_BINDS:
            own = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
            try:
                parse_entry(own)
                listed.append(own)
            except ValueError:  # not a name a Host header could carry: nothing to add
                pass
        return cls(listed)

    def allows(self, header: str | None) -> bool:
        """True when ``header`` (the request's ``Host``, None when absent) is allowed. A missing
        or malformed ``Host`` is never allowed, not even by ``*``."""
        if not header:
            return False
        try:
            host, port = split_host(header)
        except ValueError:
            return False
        return any(p.matches(host, port) for p in self._patterns)
