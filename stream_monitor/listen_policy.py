"""Whether a listen address reaches beyond this host, and whether a token can guard one that does.

The configuration refuses an API bound to anything but loopback unless ``api.token`` passes
:func:`token_weakness` (see ``Config``): an exposed API with no token, or with a placeholder
copied from an example, is the mistake this module exists to stop. The checks are deliberately
rough: they catch the values people actually leave in place, not every weak secret.
"""

from __future__ import annotations

import ipaddress
import re

MIN_TOKEN_CHARS = 32
MIN_DISTINCT_CHARS = 10
GENERATE_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"

# Words that mark a value as a placeholder rather than a generated secret (case-insensitive,
# anywhere in the token). Each is long enough that a random token_urlsafe(32) contains any of
# them with a probability of about 1e-4 ("xxxx", not "xxx", for that reason).
_PLACEHOLDER_WORDS = ("example", "placeholder", "replace", "secret", "password", "passwd", "token",
                      "changeit", "default", "dummy", "sample", "xxxx", "your")
_CHANGE_ME = re.compile(r"change[\W_]*(?:it|me)", re.IGNORECASE)


def is_loopback(host: str) -> bool:
    """True when ``host`` (a listen address as ``api.host`` takes it) is loopback only:
    ``localhost``, an address in 127.0.0.0/8, ``::1`` or an IPv4-mapped loopback address.
    Everything else, including ``""``, ``0.0.0.0``, ``::`` and other host names, is exposed."""
    name = host.strip().rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def token_weakness(token: str | None) -> str | None:
    """Why ``token`` cannot guard an exposed API, or None when it passes the rough checks:
    set, at least :data:`MIN_TOKEN_CHARS` characters, at least :data:`MIN_DISTINCT_CHARS`
    distinct characters, and no placeholder word (``change-me``, ``example``, ``secret``...)."""
    if not token:
        return "it is not set"
    if len(token) < MIN_TOKEN_CHARS:
        return f"it is shorter than {MIN_TOKEN_CHARS} characters"
    if len(set(token)) < MIN_DISTINCT_CHARS:
        return f"it has fewer than {MIN_DISTINCT_CHARS} distinct characters"
    lowered = token.lower()
    found = _CHANGE_ME.search(token)
    word = found.group(0) if found else next((w for w in _PLACEHOLDER_WORDS if w in lowered), None)
    if word is not None:
        return f"it looks like a placeholder (contains {word!r})"
    return None
