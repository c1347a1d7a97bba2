"""A real HTTP server on 127.0.0.1 (stdlib, in a thread) that serves weights the way Dropbox and
Google Drive do, and the ways they fail. Every request is logged with its Range header.

Routes (FILE is a key of ``WeightsServer.files``):
  /good/FILE        the file; honours Range (206)
  /cut/FILE         Content-Length of the whole file, then the connection closes at half (ignores Range)
  /resume/FILE      the first request is cut at half; a Range request gets the rest (206)
  /replaced/FILE    ETag "v1", the first request cut at half; then FILE is replaced by replacement[FILE]
                    (ETag "v2"): a Range request with an If-Range of "v1" gets the whole new file (200),
                    one without If-Range gets the rest of the new file (206), as a plain server would
  /flaky/FILE       503 twice, then the file
  /slow/FILE        the file in 10 pieces, 0.15 s apart
  /html             an HTML error page with status 200
  /html-as-binary   the same page labelled application/octet-stream
  /drive/uc?id=FILE         Drive's 2024 virus-scan page (form id=download-form, confirm + uuid)
  /drive-old/uc?id=FILE     Drive's older page (a confirm link + download_warning cookie)
  /download?id=FILE&confirm=t&uuid=U   the file, only with the form's fields
"""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import torch

ERROR_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
              b"<body><p class=\"uc-error-subcaption\">Too many users have viewed or downloaded this file "
              b"recently.</p></body></html>")
UUID = "5d1a3b2c-0000-4000-8000-000000000001"


class WeightsServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.replacement: dict[str, bytes] = {}  # /replaced/: the file's next version
        self.log: list[tuple[str, str | None]] = []  # (path with query, Range header)
        self._flaky: dict[str, int] = {}
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "WeightsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def hits(self, prefix: str) -> list[tuple[str, str | None]]:
        with self._lock:
            return [entry for entry in self.log if entry[0].startswith(prefix)]

    def count_flaky(self, name: str) -> int:
        with self._lock:
            self._flaky[name] = self._flaky.get(name, 0) + 1
            return self._flaky[name]


def _handler(server: WeightsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            with server._lock:
                server.log.append((self.path, self.headers.get("Range")))
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            route, _, name = parts.path.lstrip("/").partition("/")
            body = server.files.get(name, server.files.get(query.get("id", "")))
            if route == "html":
                return self._send(ERROR_PAGE, ctype="text/html; charset=utf-8")
            if route == "html-as-binary":
                return self._send(ERROR_PAGE)
            if route == "download":
                ok = query.get("confirm") == "t" and query.get("uuid") == UUID and body is not None
                return self._send(body) if ok else self._send(b"denied", status=403)
            if route in ("drive", "drive-old") and body is not None:
                return self._drive(route, query, body)
            if body is None:
                return self._send(b"not found", status=404)
            if route == "good":
                return self._send_range(body)
            if route == "cut":
                return self._send(body, cut_at=len(body) // 2)
            if route == "replaced":
                first = not any(p.startswith("/replaced/") for p, _ in server.log[:-1])
                if first:
                    return self._send(body, cut_at=len(body) // 2, etag='"v1"')
                new = server.replacement[name]
                if self.headers.get("Range") and self.headers.get("If-Range") in (None, '"v2"'):
                    return self._send_range(new, etag='"v2"')
                return self._send(new, etag='"v2"')
            if route == "resume":
                if self.headers.get("Range"):
                    return self._send_range(body)
                return self._send(body, cut_at=len(body) // 2)
            if route == "flaky":
                if server.count_flaky(name) <= 2:
                    return self._send(b"busy", status=503)
                return self._send(body)
            if route == "slow":
                return self._send(body, pieces=10, pause=0.15)
            return self._send(b"not found", status=404)

        def _drive(self, route: str, query: dict[str, str], body: bytes) -> None:
            fid = query["id"]
            if route == "drive":
                page = (f'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
                        f'<form id="download-form" action="{server.url}/download" method="get">'
                        f'<input type="submit" id="uc-download-link" value="Download anyway"/>'
                        f'<input type="hidden" name="id" value="{fid}"><input type="hidden" name="export" '
                        f'value="download"><input type="hidden" name="confirm" value="t">'
                        f'<input type="hidden" name="uuid" value="{UUID}"></form></body></html>')
                return self._send(page.encode(), ctype="text/html; charset=utf-8")
            if query.get("confirm") == "TOKEN" and "download_warning_1=TOKEN" in (self.headers.get("Cookie") or ""):
                return self._send(body)
            page = (f'<html><head><title>Google Drive - Virus scan warning</title></head><body>'
                    f'<a id="uc-download-link" href="/drive-old/uc?export=download&amp;confirm=TOKEN&amp;id={fid}">'
                    f'Download anyway</a></body></html>')
            return self._send(page.encode(), ctype="text/html", cookie="download_warning_1=TOKEN; Path=/")

        def _send_range(self, body: bytes, etag: str | None = None) -> None:
            rng = self.headers.get("Range")
            if not rng:
                return self._send(body, etag=etag)
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            if etag:
                self.send_header("ETag", etag)
            self._body(body[start:], "application/octet-stream")

        def _send(self, body: bytes, status: int = 200, ctype: str = "application/octet-stream",
                  cut_at: int | None = None, pieces: int = 1, pause: float = 0.0, cookie: str | None = None,
                  etag: str | None = None) -> None:
            self.send_response(status)
            if cookie:
                self.send_header("Set-Cookie", cookie)
            if etag:
                self.send_header("ETag", etag)
            self._body(body, ctype, cut_at, pieces, pause)

        def _body(self, body: bytes, ctype: str, cut_at: int | None = None, pieces: int = 1,
                  pause: float = 0.0) -> None:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            data = body[:cut_at] if cut_at is not None else body
            step = -(-len(data) // pieces) or 1
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(pause)
            self.close_connection = True

    return Handler


def serialise(obj) -> bytes:
    """The bytes ``torch.save`` writes for ``obj`` (what the server hands out)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
