"""Source URLs: which scheme a URL names, the local path of a file URL, and a printable form.

Camera URLs often carry credentials (``rtsp://user:secret@host/...``, ``?apikey=...``);
everything that logs a URL or shows it in the API uses :func:`redact` so they never leave
the process.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit


def scheme_of(url: str) -> str:
    """Lower-case scheme of ``url``; ``"file"`` for a plain path (no ``scheme:`` prefix)."""
    head, sep, _ = url.partition(":")
    # A one-letter "scheme" is a Windows drive (C:\...), anything with a slash before ':' is a path.
    if not sep or len(head) < 2 or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return "file"
    return head.lower()


def local_path(url: str) -> Path:
    """The filesystem path of ``file://...`` or a plain path (``~`` expanded)."""
    if scheme_of(url) == "file" and url.lower().startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL with a remote host: {url}")
        return Path(unquote(parts.path))
    return Path(url).expanduser()


def redact(url: str) -> str:
    """``url`` fit to log or show: any password in its user-info and the value of every query
    (or fragment) parameter whose name looks secret (:func:`is_secret_param`) replaced by
    ``***``, control characters percent-encoded (a URL cannot forge a log line). The rest of
    the URL is kept as written."""
    return _escape_controls(_redact_params(_redact_userinfo(url)))


def is_secret_param(name: str) -> bool:
    """True for a query parameter name that usually carries a credential: ``password``,
    ``token``, ``access_token``, ``apikey``, ``X-Amz-Signature``, ``sig``, ``session`` ...
    (case, ``-``, ``_`` and ``.`` ignored)."""
    key = re.sub(r"[-_.\s]", "", name.lower())
    return key in _SECRET_NAMES or key.endswith(_SECRET_SUFFIXES) or any(w in key for w in _SECRET_WORDS)


# Compared after lower-casing and dropping -, _, . and spaces (so "api_key", "API-Key", "apiKey").
# "auth" also catches "author": hiding a harmless value costs less than showing a secret.
_SECRET_NAMES = frozenset({"pass", "pwd", "pw", "key", "sig"})
_SECRET_SUFFIXES = ("key", "sig", "pwd")
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "signature", "credential", "session", "auth")
# A parameter after "?" or "#" (or a later "&"/";"): the separator, the raw name, the raw value.
_PARAM = re.compile(r"(?P<sep>[?#&;])(?P<name>[^=?#&;]*)=(?P<value>[^?#&;]*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _redact_params(url: str) -> str:
    starts = [i for i in (url.find("?"), url.find("#")) if i >= 0]
    if not starts:
        return url
    head, tail = url[: min(starts)], url[min(starts):]

    def hide(m: re.Match[str]) -> str:
        if m["value"] and is_secret_param(unquote_plus(m["name"])):
            return f"{m['sep']}{m['name']}=***"
        return m.group(0)

    return head + _PARAM.sub(hide, tail)


def _redact_userinfo(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    except ValueError:  # unparsable (e.g. a bad port): hide the whole user-info part
        head, _, rest = url.partition("://")
        return f"{head}://***@{rest.rpartition('@')[2]}" if "@" in rest else url
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _escape_controls(url: str) -> str:
    return _CONTROL.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode("utf-8")), url)
