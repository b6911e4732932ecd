"""Download one public Google Drive file into a ``.part`` file: confirm page, resume, limits.

Drive's flow for a public file: ``GET {base}/uc?export=download&id=ID`` redirects to
``drive.usercontent.google.com/download``; a file too large for Drive's virus scan first
answers with an HTML page whose form (``id="download-form"``: ``confirm=t``, ``uuid=...``)
or, on older pages, a ``confirm=TOKEN`` link leads to the bytes. Quota and permission
problems also answer with an HTML page, without such a form.

Everything that comes back is treated as hostile:

- a redirect, a form action or a link is followed only to an allowed origin: Google
  Drive's own (``https://drive.google.com``, ``drive.usercontent.google.com``,
  ``docs.google.com``), or exactly the origin of an overriding base URL
  (``STREAM_MONITOR_WEIGHTS_BASE_URL``, used by the tests' loopback server); anything
  else is refused before a connection is made;
- a confirmation page must name the requested file id; at most 1 MiB of a page is read;
- the body is written only to the caller's ``.part`` path (the server's file name in
  ``Content-Disposition`` is ignored) and never beyond the size the server announced,
  the size the caller expects, or ``max_bytes``.

Resume: a ``.part`` that already holds bytes is continued with ``Range: bytes=N-``; a
``206`` whose ``Content-Range`` starts at ``N`` is appended, a ``200`` starts over.

Errors: :class:`DownloadError` for network trouble (a dropped connection, a timeout, an
HTTP error, Drive not offering the file): the ``.part`` keeps what arrived and the next
call resumes. :class:`DownloadRefused` when the answer itself is unacceptable (a foreign
redirect, a wrong size, too large): nothing more is fetched and a wrong-size ``.part`` is
deleted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Callable
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from .errors import StreamMonitorError, WeightsError

DEFAULT_BASE_URL = "https://drive.google.com"
BASE_URL_ENV = "STREAM_MONITOR_WEIGHTS_BASE_URL"
GOOGLE_ORIGINS = ("https://drive.google.com", "https://drive.usercontent.google.com", "https://docs.google.com")

_MAX_PAGE_BYTES = 1 << 20
_MAX_HOPS = 8  # redirects plus confirmation pages
_CHUNK = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_STAR_RANGE = re.compile(r"bytes\s+\*/(\d+)$")


class DownloadError(StreamMonitorError):
    """A network failure; what arrived stays in the ``.part`` file for the next attempt (exit code 1)."""


class DownloadRefused(WeightsError):
    """The server's answer is not acceptable (foreign host, wrong size, too large); exit code 2."""


@dataclass(frozen=True)
class Download:
    """A complete download: its path (the ``.part``), size, and where it resumed from (0: fresh)."""

    path: Path
    size: int
    resumed_from: int


def _shown(text: str, limit: int = 120) -> str:
    """Server-supplied text made safe for one line of a message."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        port = -1
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}"


def base_url_from_env(environ: os._Environ[str] | dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(BASE_URL_ENV) or DEFAULT_BASE_URL


class _ConfirmPage(HTMLParser):
    """Collects what a Drive confirmation page offers: the download form, a confirm link, an error text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.form_action: str | None = None
        self.form_fields: list[tuple[str, str]] = []
        self.confirm_href: str | None = None
        self.error_text = ""
        self.title = ""
        self._in_form = False
        self._in_error = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id") == "download-form" and self.form_action is None:
            self.form_action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("type") == "hidden" and a.get("name"):
            self.form_fields.append((a["name"], a.get("value", "")))
        elif tag == "a" and self.confirm_href is None and "confirm=" in a.get("href", ""):
            self.confirm_href = a["href"]
        elif "uc-error-subcaption" in a.get("class", "").split():
            self._in_error = True
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "title":
            self._in_title = False
        elif tag in ("p", "div"):
            self._in_error = False

    def handle_data(self, data: str) -> None:
        if self._in_error:
            self.error_text += data
        elif self._in_title:
            self.title += data


class DriveClient:
    """Downloads public Drive files; ``base_url`` replaces ``https://drive.google.com`` (tests).

    ``progress``: ``True``/``False`` force the tqdm bar on stderr on or off; ``None`` shows
    it when stderr is a terminal.
    """

    def __init__(self, base_url: str | None = None, *, timeout: tuple[float, float] = (15.0, 60.0),
                 progress: bool | None = None) -> None:
        base = (base_url or base_url_from_env()).rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WeightsError(f"{BASE_URL_ENV}: not an http(s) URL: {base!r}")
        self.base_url = base
        self.origins = frozenset(GOOGLE_ORIGINS) if base == DEFAULT_BASE_URL else frozenset({_origin(base)})
        self.timeout = timeout
        self.progress = progress
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "stream-monitor-weights-fetch"
        # The bytes as stored: sizes and Range offsets then count the file itself, not a gzip stream.
        self.session.headers["Accept-Encoding"] = "identity"

    def _allowed(self, url: str, what: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or _origin(url) not in self.origins or parts.username \
                or parts.password:
            raise DownloadRefused(f"refused to follow {what} to {_shown(_origin(url))}: not Google Drive "
                                  f"(allowed: {', '.join(sorted(self.origins))})")
        return url

    def _next_from_page(self, page: bytes, file_id: str, page_url: str) -> str:
        parser = _ConfirmPage()
        parser.feed(page.decode("utf-8", errors="replace"))
        if parser.form_action is not None:
            action = self._allowed(urljoin(page_url, parser.form_action), "the confirmation form")
            fields = parse_qsl(urlsplit(action).query) + parser.form_fields
            if len(fields) > 16:
                raise DownloadRefused("Drive's confirmation form has too many fields; refused")
            named = [v for k, v in fields if k == "id"]
            if named != [file_id]:
                raise DownloadRefused(f"Drive's confirmation form names another file ({_shown(', '.join(named))}), "
                                      f"not {file_id}; refused")
            return urlunsplit(urlsplit(action)._replace(query=urlencode(fields)))
        if parser.confirm_href is not None:
            url = self._allowed(urljoin(page_url, parser.confirm_href), "the confirmation link")
            if dict(parse_qsl(urlsplit(url).query)).get("id") != file_id:
                raise DownloadRefused(f"Drive's confirmation link names another file, not {file_id}; refused")
            return url
        reason = parser.error_text or parser.title or "a page without a download form"
        raise DownloadError(f"Google Drive did not offer file {file_id}: {_shown(reason)} "
                            "(a quota or permission problem; try again later)")

    def download(self, file_id: str, part: Path, *, max_bytes: int, expected_size: int | None = None,
                 label: str | None = None) -> Download:
        """Bring Drive file ``file_id`` completely into ``part`` (resuming what is there).

        ``expected_size`` (the manifest's record) is enforced as soon as the server
        announces a size; ``max_bytes`` bounds any answer. Raises :class:`DownloadError`
        or :class:`DownloadRefused` as the module docstring says.
        """
        url = self._allowed(f"{self.base_url}/uc?{urlencode({'export': 'download', 'id': file_id})}", "the base URL")
        have = part.stat().st_size if part.is_file() else 0
        if expected_size is not None and have > expected_size:
            part.unlink()
            have = 0
        resumed_from = have
        for _hop in range(_MAX_HOPS):
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                resp = self.session.get(url, headers=headers, stream=True, allow_redirects=False,
                                        timeout=self.timeout)
            except requests.RequestException as exc:
                raise self._network_error(file_id, part, exc) from None
            with resp:
                if resp.status_code in _REDIRECTS:
                    url = self._allowed(urljoin(url, resp.headers.get("Location", "")), "a redirect")
                    continue
                if resp.status_code == 416 and have:
                    done = _STAR_RANGE.match(resp.headers.get("Content-Range", ""))
                    if done and int(done.group(1)) == have and expected_size in (None, have):
                        return Download(part, have, resumed_from)
                    part.unlink()  # the part does not fit the file the server has: start over
                    have = resumed_from = 0
                    continue
                if resp.status_code not in (200, 206):
                    raise DownloadError(f"Google Drive answered HTTP {resp.status_code} for file {file_id} "
                                        f"({_shown(resp.reason or '')})")
                if resp.headers.get("Content-Type", "").lower().startswith("text/html"):
                    page = resp.raw.read(_MAX_PAGE_BYTES, decode_content=True)
                    url = self._next_from_page(page, file_id, url)
                    continue
                start, total = self._span(resp, have, file_id)
                if start == 0 and have:
                    resumed_from = 0  # the server ignored the Range: the body is the whole file
                self._check_total(total, expected_size, max_bytes, part, file_id)
                size = self._write(resp, part, start, total, expected_size, max_bytes, label or file_id)
                return Download(part, size, resumed_from)
        raise DownloadRefused(f"Google Drive sent more than {_MAX_HOPS} redirects or pages for file {file_id}; refused")

    @staticmethod
    def _span(resp: requests.Response, have: int, file_id: str) -> tuple[int, int | None]:
        """Where the body starts in the file, and the file's total size if announced."""
        if resp.status_code == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if m is None or int(m.group(1)) != have:
                raise DownloadError(f"Google Drive answered a resume of file {file_id} with a range that does not "
                                    f"start at byte {have} ({_shown(resp.headers.get('Content-Range', ''))})")
            total = None if m.group(3) == "*" else int(m.group(3))
            if total is not None and have > total:
                raise DownloadError(f"Google Drive answered a resume of file {file_id} at byte {have} of a "
                                    f"{total}-byte file")
            return have, total
        length = resp.headers.get("Content-Length", "").strip()
        return 0, int(length) if length.isdigit() else None

    @staticmethod
    def _check_total(total: int | None, expected: int | None, max_bytes: int, part: Path, file_id: str) -> None:
        if total is not None and expected is not None and total != expected:
            part.unlink(missing_ok=True)
            raise DownloadRefused(f"file {file_id} is {total} bytes on Drive, but the copy recorded in the manifest "
                                  f"is {expected} bytes: refused (a different release, or not the authors' file)")
        if total is not None and total > max_bytes:
            part.unlink(missing_ok=True)
            raise DownloadRefused(f"file {file_id} is {total} bytes, more than the {max_bytes} accepted; refused")

    def _write(self, resp: requests.Response, part: Path, start: int, total: int | None, expected: int | None,
               max_bytes: int, label: str) -> int:
        limit = min(x for x in (total, expected, max_bytes) if x is not None)
        if start > limit:
            part.unlink(missing_ok=True)
            raise DownloadRefused(f"{label}: {part} already holds more than the {limit} bytes expected; deleted")
        from tqdm import tqdm

        part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if start else os.O_TRUNC), 0o644)
        size = start
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                   disable=None if self.progress is None else not self.progress, leave=False)
        try:
            with os.fdopen(fd, "ab" if start else "wb") as out:
                size = self._copy(resp, out, size, limit, bar.update)
        except requests.RequestException as exc:
            raise self._network_error(label, part, exc) from None
        finally:
            bar.close()
        if size > limit:
            part.unlink(missing_ok=True)
            raise DownloadRefused(f"{label}: the server sent more than the {limit} bytes it may; refused")
        if total is not None and size < total:
            raise DownloadError(f"{label}: the download stopped at {size} of {total} bytes; "
                                f"run the command again to resume ({part})")
        return size

    @staticmethod
    def _copy(resp: requests.Response, out: IO[bytes], size: int, limit: int, advance: Callable[[int], object]) -> int:
        for chunk in resp.iter_content(_CHUNK):
            room = limit - size
            out.write(chunk[:room + 1])  # one byte past the limit marks the overrun; the file is then deleted
            size += min(len(chunk), room + 1)
            advance(len(chunk))
            if size > limit:
                break
        return size

    @staticmethod
    def _network_error(what: str, part: Path, exc: Exception) -> DownloadError:
        kept = part.stat().st_size if part.is_file() else 0
        tail = f"; {kept} bytes kept in {part}, run the command again to resume" if kept else ""
        return DownloadError(f"{what}: cannot download from Google Drive: {_shown(type(exc).__name__ + ': ' + str(exc), 200)}"
                             f"{tail}")
