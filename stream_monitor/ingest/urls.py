"""Source URLs: which scheme a URL names, the local path of a file URL, and a printable form.

Camera URLs often carry credentials (``rtsp://user:secret@host/...``); everything that logs
a URL or shows it in the API uses :func:`redact` so the password never leaves the process.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit


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
    """``url`` with any password in its user-info replaced by ``***``."""
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
