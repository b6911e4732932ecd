"""Which sources may be opened, and how: one policy for every way a URL enters.

Two levels of trust, decided by where a URL came from:

- **Operator URLs** (the command line, the config file's ``streams:`` of a worker without a
  fleet) are trusted for hosts and paths. They are still refused, before anything is opened,
  for control characters or whitespace (a ``CR LF`` in an RTSP URL reaches the server as a
  raw request line) and for a scheme outside :data:`SCHEMES`; FFmpeg opens them with the
  scheme's protocol whitelist (:data:`PROTOCOLS`), so redirects and HLS segments cannot
  switch protocol (``http`` to ``file``, say).
- **Network URLs** (``POST /streams``, ``POST /predict``, the fleet's desired streams in
  Redis) go through a :class:`SourceGuard` as well. Hosts are checked against a
  :class:`HostPolicy` (``api.source_hosts``; ``api.predict_hosts`` for ``/predict``) after
  DNS resolution, on every connection and every redirect, and the connection goes to the
  address that was checked (a second resolution could answer differently: DNS rebinding).
  Local files are opened only under a :class:`RootPolicy` (``api.source_roots``;
  ``api.predict_roots``), as resolved, following no symbolic link (``O_NOFOLLOW`` on every
  path component), so a link swapped in after the check cannot escape. FFmpeg itself opens
  nothing for these sources: PyAV's ``io_open`` hands every open (the URL, HLS playlists and
  segments, keys) to :meth:`SourceGuard.io_open`, and RTSP runs through a relay
  (:mod:`.rtsp_relay`) that connects to the checked address and refuses redirects.

A refusal raises :class:`~stream_monitor.errors.SourceRefused` whose message names the
setting ("not allowed by api.source_hosts") and never whether a host answered or a file exists.

Addresses in :data:`ALWAYS_REFUSED` (loopback, link-local with the cloud metadata service,
unspecified, multicast, other metadata addresses) and the configured Redis endpoint are
refused to ``*`` and to host names. An explicit address or network entry that lies inside one
of those ranges allows it (``127.0.0.1`` for a camera proxy on the same host); the Redis
endpoint (address and port) is refused whatever the entries say.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union
from urllib.parse import urlsplit

from ..config import Config, url_text_problem
from ..errors import SourceError, SourceRefused
from .http_reader import GuardedHttpReader
from .urls import local_path, redact, scheme_of

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# Schemes a source URL may have (the Source table in .base implements each).
SCHEMES = frozenset({"rtsp", "rtsps", "http", "https", "file", "synthetic"})
NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}

# FFmpeg's protocol_whitelist per scheme for operator URLs: what a stream of that scheme
# needs (RTSP's RTP over UDP or TCP, TLS under the secure schemes, crypto for AES-128 HLS),
# and nothing that would let a redirect or a playlist switch to another protocol.
PROTOCOLS = {
    "rtsp": "rtsp,tcp,udp,rtp",
    "rtsps": "rtsps,tls,tcp,udp,rtp,srtp",
    "http": "http,tcp,crypto",
    "https": "https,tls,tcp,crypto",
    "file": "file,crypto",
}
# For guarded sources FFmpeg opens nothing itself (every open goes through io_open); a
# whitelist naming no protocol makes any open that bypassed io_open fail.
NO_PROTOCOLS = "none"


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


ALWAYS_REFUSED: tuple[IPNetwork, ...] = _nets(
    "127.0.0.0/8", "::1/128",                 # loopback: this host's own services (Redis, the API)
    "169.254.0.0/16", "fe80::/10",            # link-local, with the cloud metadata service 169.254.169.254
    "0.0.0.0/8", "::/128",                    # "this host"
    "224.0.0.0/4", "ff00::/8", "255.255.255.255/32",
    "100.100.100.200/32",                     # Alibaba Cloud metadata
    "fd00:ec2::254/128",                      # AWS metadata over IPv6
)


def _plain(address: IPAddress) -> IPAddress:
    """IPv4 inside IPv6 (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``) as the IPv4 it reaches."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def check_text(url: str) -> None:
    """Refuse control characters anywhere, and whitespace in a URL (a plain path may hold spaces)."""
    problem = url_text_problem(url)
    if problem is not None:
        raise SourceError(f"{redact(url)!r}: {problem}")


def check_scheme(url: str) -> str:
    """The URL's scheme if it is one of :data:`SCHEMES`, else SourceError."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise SourceError(f"{redact(url)!r}: unsupported source scheme {scheme!r} "
                          f"(use rtsp://, rtsps://, http(s)://, file:// or a path, or synthetic:)")
    return scheme


def endpoint(url: str) -> tuple[str, int]:
    """(host, port) of a network URL, the scheme's default port when none is given."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SourceError(f"{redact(url)!r}: malformed URL ({exc})") from exc
    if not parts.hostname:
        raise SourceError(f"{redact(url)!r}: no host")
    return parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme.lower()]


@dataclass(frozen=True)
class _Rule:
    kind: str  # "any" | "name" | "suffix" | "net"
    name: str = ""
    net: IPNetwork | None = None


def _rule(entry: str) -> _Rule:
    text = entry.strip().lower().strip("[]")
    if text == "*":
        return _Rule("any")
    if text.startswith("*."):
        return _Rule("suffix", name=text[1:])
    try:
        return _Rule("net", net=ipaddress.ip_network(text, strict=False))
    except ValueError:
        return _Rule("name", name=text.rstrip("."))


Resolver = Callable[[str, int], list[IPAddress]]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal is itself); SourceError if none."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceError(f"cannot resolve host {host!r} ({exc})") from exc
    seen: dict[IPAddress, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen[ipaddress.ip_address(str(sockaddr[0]).split("%")[0])] = None
    if not seen:
        raise SourceError(f"cannot resolve host {host!r} (no IPv4 or IPv6 address)")
    return list(seen)


class HostPolicy:
    """Which hosts a network URL may name (see the module docstring for the rules).

    ``entries``: ``*`` (any host outside :data:`ALWAYS_REFUSED`), ``*.example.com``, a host
    name, an address or a network. ``refused_endpoints``: (host, port) pairs refused whatever
    the entries say (the Redis server: a request line smuggled into it would run commands).
    ``setting`` names the configuration key in refusals.
    """

    def __init__(self, entries: Sequence[str], setting: str,
                 refused_endpoints: Sequence[tuple[str, int]] = (), resolver: Resolver = resolve) -> None:
        self.rules = [_rule(e) for e in entries]
        self.setting = setting
        self.refused_endpoints = list(refused_endpoints)
        self._resolve = resolver

    def refusal(self, url: str) -> SourceRefused:
        return SourceRefused(f"{redact(url)!r}: not allowed by {self.setting}")

    def names_allow(self, host: str) -> bool:
        return any(r.kind == "any" or (r.kind == "name" and host == r.name)
                   or (r.kind == "suffix" and host.endswith(r.name)) for r in self.rules)

    def address_allowed(self, host: str, address: IPAddress, port: int) -> bool:
        """Whether ``address`` (one of ``host``'s) on ``port`` may be connected to."""
        plain = _plain(address)
        for refused_host, refused_port in self.refused_endpoints:
            if port == refused_port and any(_plain(a) == plain for a in self._safe_resolve(refused_host, port)):
                return False
        nets = [r.net for r in self.rules if r.kind == "net" and r.net is not None and plain.version == r.net.version
                and plain in r.net]
        special = [n for n in ALWAYS_REFUSED if n.version == plain.version and plain in n]
        if special:
            # Only an explicit entry inside the special range reaches it; '*', names and wide
            # networks (0.0.0.0/0) never do.
            return any(net.subnet_of(s) for net in nets for s in special  # type: ignore[arg-type]
                       if net.version == s.version)
        return bool(nets) or self.names_allow(host)

    def _safe_resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            return self._resolve(host, port)
        except SourceError:
            return []

    def check_literal(self, url: str) -> tuple[str, int]:
        """The checks that need no DNS: a host that no entry could allow (a name no name entry
        matches, with no network entries to resolve it into) or an address that is not
        allowed. Returns the URL's (host, port); raises SourceRefused."""
        host, port = endpoint(url)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and not self.address_allowed(host, literal, port) or \
                literal is None and not self.names_allow(host) and not any(r.kind == "net" for r in self.rules):
            raise self.refusal(url)
        return host, port

    def check(self, url: str) -> list[IPAddress]:
        """Resolve the URL's host and check every address (blocking: DNS). Returns the
        addresses to connect to; raises SourceRefused, or SourceError when it cannot resolve."""
        host, port = self.check_literal(url)
        addresses = self._resolve(host, port)
        # Every answer must pass: a name that resolves to a camera and to 127.0.0.1 is refused,
        # whichever address a client would pick.
        if not all(self.address_allowed(host, a, port) for a in addresses):
            raise self.refusal(url)
        return addresses

    def connect(self, url: str, timeout: float) -> socket.socket:
        """A TCP connection to the URL's host, made to an address that passed :meth:`check`."""
        host, port = endpoint(url)
        last: OSError | None = None
        for address in self.check(url):
            try:
                return socket.create_connection((str(address), port), timeout=timeout)
            except OSError as exc:
                last = exc
        raise SourceError(f"{redact(url)!r}: cannot connect ({last})")


class RootPolicy:
    """Local files under ``roots`` only, opened as resolved with no symbolic link followed.

    ``setting`` names the configuration key in refusals. Paths outside the roots are refused
    with the same message whether or not they exist.
    """

    def __init__(self, roots: Sequence[Path], setting: str) -> None:
        self.roots = list(roots)
        self.setting = setting

    def refusal(self, path: str) -> SourceRefused:
        return SourceRefused(f"{path!r}: not allowed by {self.setting}")

    def resolve(self, url: str) -> tuple[Path, Path]:
        """(root, resolved path) for a path or ``file://`` URL inside a root; else SourceRefused."""
        try:
            path = Path(os.path.realpath(local_path(url)))
        except ValueError as exc:
            raise self.refusal(url) from exc
        for root in self.roots:
            real_root = Path(os.path.realpath(root))
            if path == real_root or real_root in path.parents:
                return real_root, path
        raise self.refusal(url)

    def open(self, url: str) -> int:
        """A read-only descriptor of the regular file ``url`` names inside a root (see
        :func:`open_beneath`)."""
        root, path = self.resolve(url)
        return open_beneath(root, path, url, self)


def open_beneath(root: Path, path: Path, shown: str, policy: RootPolicy) -> int:
    """Open the regular file ``path`` (resolved, inside ``root``) following no link.

    Each component below ``root`` is opened relative to its parent with ``O_NOFOLLOW``: a link
    swapped in after the path was resolved and checked makes the open fail (SourceRefused
    naming ``policy``'s setting), never escape the root. SourceError for a missing file.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = path.relative_to(root).parts
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            # O_NONBLOCK: a FIFO opens at once (then refused below) instead of hanging the thread.
            flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise SourceError(f"{shown!r}: no such file") from exc
                raise policy.refusal(shown) from exc  # ELOOP / ENOTDIR: a link or a swap
            os.close(fd)
            fd = child
        if not parts or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(f"{shown!r}: not a regular file")
        os.set_blocking(fd, True)
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


class SourceGuard:
    """Everything a source from the network may open, and how (see the module docstring)."""

    def __init__(self, hosts: HostPolicy, roots: RootPolicy, timeout_s: float = 10.0,
                 schemes: tuple[Iterable[str], str] | None = None) -> None:
        """``schemes``: (allowed schemes, the setting that lists them) when narrower than
        :data:`SCHEMES`; others are then refused naming that setting."""
        self.hosts = hosts
        self.roots = roots
        self.timeout_s = timeout_s
        self.schemes = frozenset(s.lower() for s in schemes[0]) if schemes else SCHEMES
        self.schemes_setting = schemes[1] if schemes else None

    def check(self, url: str) -> None:
        """Every check that needs no network: text, scheme, local paths against the roots, host
        names against the entries. Raises SourceError / SourceRefused."""
        check_text(url)
        if self.schemes_setting is not None and scheme_of(url) not in self.schemes:
            raise SourceRefused(f"{redact(url)!r}: scheme {scheme_of(url)!r} is not allowed by {self.schemes_setting}")
        scheme = check_scheme(url)
        if scheme == "file":
            self.roots.resolve(url)
        elif scheme in NETWORK_SCHEMES:
            self.hosts.check_literal(url)

    def check_resolved(self, url: str) -> None:
        """:meth:`check`, then the host's addresses after DNS resolution (blocking)."""
        self.check(url)
        if scheme_of(url) in NETWORK_SCHEMES:
            self.hosts.check(url)

    def connect(self, url: str) -> socket.socket:
        """A TCP connection to a checked address of the URL's host (no second resolution)."""
        check_text(url)
        return self.hosts.connect(url, self.timeout_s)

    def io_open(self, url: str, flags: int, options: dict[str, str]) -> io.IOBase:
        """PyAV's ``io_open``: every file FFmpeg wants to read for this source, checked.

        Plain paths and ``file:`` URLs open under the roots; ``http(s)`` through
        :class:`~stream_monitor.ingest.http_reader.GuardedHttpReader` (checked, pinned, each
        redirect checked); anything else, and any open for writing, is refused.
        """
        if flags & 2:  # AVIO_FLAG_WRITE
            raise SourceRefused(f"{redact(url)!r}: sources are read-only")
        check_text(url)
        scheme = scheme_of(url)
        if scheme == "file":
            return os.fdopen(self.roots.open(url), "rb")
        if scheme in ("http", "https"):
            return GuardedHttpReader(url, self)
        raise SourceRefused(f"{redact(url)!r}: scheme {scheme!r} is not allowed inside this source")


def _redis_endpoint(url: str | None) -> list[tuple[str, int]]:
    if not url:
        return []
    try:
        parts = urlsplit(url)
        if parts.scheme in ("unix", "redis+unix") or not parts.hostname:
            return []
        return [(parts.hostname, parts.port or 6379)]
    except ValueError:
        return []


def stream_guard(cfg: Config) -> SourceGuard:
    """The guard of streams that arrive over the API or through the fleet's desired set."""
    hosts = HostPolicy(cfg.api.source_hosts, "api.source_hosts", _redis_endpoint(cfg.redis.url))
    return SourceGuard(hosts, RootPolicy(cfg.api.source_roots, "api.source_roots"), cfg.ingest.open_timeout_s)


def predict_guard(cfg: Config) -> SourceGuard:
    """The guard of ``POST /predict`` targets: only the hosts and roots listed for it."""
    hosts = HostPolicy(cfg.api.predict_hosts, "api.predict_hosts", _redis_endpoint(cfg.redis.url))
    schemes = {s.lower() for s in cfg.api.predict_schemes} & NETWORK_SCHEMES | {"file"}
    return SourceGuard(hosts, RootPolicy(cfg.api.predict_roots, "api.predict_roots"), cfg.ingest.open_timeout_s,
                       (schemes, "api.predict_schemes"))
