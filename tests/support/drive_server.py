"""A loopback stand-in for Google Drive's public download flow, with its failure modes.

``GET /uc?export=download&id=ID`` redirects (303) to ``/download?id=ID&export=download``,
as drive.google.com redirects to drive.usercontent.google.com. There, a file served with
``confirm=True`` first answers with Drive's virus-scan page: an HTML form
``id="download-form"`` whose hidden fields (``id``, ``export``, ``confirm=t``, ``uuid``)
lead to the bytes. The bytes come as ``application/octet-stream`` with an attachment
``Content-Disposition`` and honour ``Range: bytes=N-`` (206, or 416 past the end).

Each :class:`DriveFile` can misbehave: drop the connection part-way (once), announce a
size it does not send, send a body without ``Content-Length``, redirect or point its form
elsewhere, name another file in its form, or answer with a quota page. Every request is
recorded (path, query, Range header) in ``requests``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class DriveFile:
    body: bytes
    confirm: bool = True
    drop_after: int | None = None  # close after this many body bytes, the first time only
    announce: int | None = None  # Content-Length sent instead of len(body); no body then
    no_length: bool = False  # close-delimited body, no Content-Length
    redirect_to: str | None = None  # where /uc redirects instead of /download
    form_action: str | None = None  # the confirmation form's action instead of /download
    form_id: str | None = None  # the id the confirmation form names instead of the file's
    quota_page: bool = False  # answer with Drive's "too many users" page and no form


@dataclass
class Request:
    path: str
    query: dict[str, str]
    range: str | None


@dataclass
class FakeDrive:
    files: dict[str, DriveFile] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        drive = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                try:
                    drive._handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    # The client hung up mid-body (it refuses oversized downloads): a real server
                    # notes nothing, and socketserver's traceback would land in the CLI's stderr.
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True, name="fake-drive")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.requests.append(Request(parts.path, query, h.headers.get("Range")))
        f = self.files.get(query.get("id", ""))
        if f is None:
            h.send_error(404)
            return
        if parts.path == "/uc":
            h.send_response(303)
            h.send_header("Location", f.redirect_to or f"/download?id={query['id']}&export=download")
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif parts.path == "/download" and f.quota_page:
            self._html(h, "<html><head><title>Google Drive - Quota exceeded</title></head><body>"
                          "<p class=\"uc-error-caption\">Sorry, you can't view or download this file at this time."
                          "</p><p class=\"uc-error-subcaption\">Too many users have viewed or downloaded this file "
                          "recently.</p></body></html>")
        elif parts.path == "/download" and f.confirm and query.get("confirm") != "t":
            action = f.form_action or f"{self.url}/download"
            self._html(h, "<html><head><title>Google Drive - Virus scan warning</title></head><body>"
                          "<p class=\"uc-warning-subcaption\">Google Drive can't scan this file for viruses.</p>"
                          f"<form id=\"download-form\" action=\"{action}\" method=\"get\">"
                          "<input type=\"submit\" id=\"uc-download-link\" value=\"Download anyway\"/>"
                          f"<input type=\"hidden\" name=\"id\" value=\"{f.form_id or query['id']}\">"
                          "<input type=\"hidden\" name=\"export\" value=\"download\">"
                          "<input type=\"hidden\" name=\"confirm\" value=\"t\">"
                          "<input type=\"hidden\" name=\"uuid\" value=\"3f2c9a0e-uuid\"></form></body></html>")
        elif parts.path == "/download":
            self._bytes(h, f)
        else:
            h.send_error(404)

    @staticmethod
    def _html(h: BaseHTTPRequestHandler, page: str) -> None:
        data = page.encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/html; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _bytes(h: BaseHTTPRequestHandler, f: DriveFile) -> None:
        body, start = f.body, 0
        asked = h.headers.get("Range", "")
        if asked.startswith("bytes=") and asked.endswith("-"):
            start = int(asked[len("bytes="):-1])
            if start >= len(body):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(body)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        h.send_response(206 if start else 200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Disposition", "attachment; filename=\"../../evil name.pkl\"")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if f.announce is not None:
            h.send_header("Content-Length", str(f.announce))
            h.end_headers()
            return
        if not f.no_length:
            h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        rest = body[start:]
        if f.drop_after is not None:
            rest, f.drop_after = rest[:f.drop_after], None
        h.wfile.write(rest)
        h.wfile.flush()
        h.close_connection = True
