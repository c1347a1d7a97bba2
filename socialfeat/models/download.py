"""One file over HTTP(S), whole or not at all.

``urllib`` alone accepts a connection closed halfway as a finished download and an
HTML error page as a file. Here the body must reach the announced Content-Length;
an HTML page is refused unless it is Drive's confirmation page, whose address is
followed; transient failures (5xx, 408/429, reset, timeout, a short body) are
retried with exponential backoff, resuming with an HTTP Range request where the
server honours one. Whether the bytes are a checkpoint is for the caller to check.
"""

from __future__ import annotations

import http.client
import logging
import sys
import time
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import HTTPCookieProcessor, OpenerDirector, Request, build_opener

from tqdm import tqdm

from socialfeat import __version__
from socialfeat.errors import SocialfeatError
from socialfeat.models.drive import confirmation_url, page_title

log = logging.getLogger(__name__)

RETRIES = 5          # consecutive failed attempts (no new bytes) before giving up
MAX_ATTEMPTS = 20    # attempts in all, even when each one makes some progress
BACKOFF_S = 1.0      # wait before the first retry; doubles with each failure in a row
MAX_BACKOFF_S = 30.0
TIMEOUT_S = 60.0     # connect and per-read timeout
MAX_PAGE_HOPS = 2    # confirmation pages followed per download
_CHUNK = 1 << 20
_TRANSIENT_STATUS = {408, 425, 429}
_TRANSIENT_ERRORS = (TimeoutError, ConnectionResetError, ConnectionAbortedError, http.client.IncompleteRead)


class DownloadError(SocialfeatError, RuntimeError):
    """The server refused, sent something other than the file, or kept failing (one-line message)."""


class _Transient(Exception):
    """A failure worth another attempt."""


class _StartOver(_Transient):
    """The partial file cannot be continued (416, or a range starting elsewhere); it was deleted."""


class _Page(Exception):
    """The server answered with an HTML page instead of the file."""

    def __init__(self, text: str, url: str) -> None:
        super().__init__(url)
        self.text, self.url = text, url


def download(url: str, part: Path, desc: str, progress: bool = True) -> None:
    """Fill ``part`` with the body of ``url``, continuing what ``part`` already holds if the
    server accepts a Range request. Raises DownloadError; ``part`` may then hold a partial body."""
    opener = build_opener(HTTPCookieProcessor(CookieJar()))  # Drive's older pages confirm with a cookie
    hops = attempts = stalled = 0
    best = _size(part)
    while True:
        attempts += 1
        try:
            _attempt(opener, url, part, desc, progress)
            return
        except _Page as page:
            next_url = confirmation_url(page.text, page.url)
            if next_url is None or hops >= MAX_PAGE_HOPS:
                title = page_title(page.text)
                raise DownloadError(f"{page.url} sent an HTML page{f' ({title!r})' if title else ''} "
                                    f"instead of the file") from None
            log.debug("following a confirmation page to %s", next_url)
            url, hops = next_url, hops + 1
        except _Transient as e:
            size = _size(part)
            stalled = 0 if size > best else stalled + 1
            best = max(best, size)
            if stalled >= RETRIES or attempts >= MAX_ATTEMPTS:
                raise DownloadError(f"{url}: {e} (gave up after {attempts} attempts)") from None
            delay = min(BACKOFF_S * 2 ** stalled, MAX_BACKOFF_S)
            log.warning("%s: %s; retrying in %.2g s", desc, e, delay)
            time.sleep(delay)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def validator_path(part: Path) -> Path:
    """Where the server's validator of a partial file (its strong ETag, else Last-Modified) is kept."""
    return part.with_name(part.name + ".validator")


def _validator(resp: http.client.HTTPResponse) -> str | None:
    """What identifies this version of the file for a later Range request (If-Range); a weak ETag
    (W/...) cannot be used there."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def _open(opener: OpenerDirector, url: str, offset: int, if_range: str | None = None) -> http.client.HTTPResponse:
    """``if_range``: the validator of the partial file's version: the server sends the rest only if the
    file is still that version, else the whole new one (a file replaced behind its URL between an
    interrupted download and its resume must not be joined from two versions; most released weights
    have no published checksum that would catch it)."""
    headers = {"User-Agent": f"socialfeat/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if if_range:
            headers["If-Range"] = if_range
    try:
        return opener.open(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            raise _StartOver("the server cannot continue the partial file") from None
        if e.code >= 500 or e.code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except URLError as e:
        if isinstance(e.reason, _TRANSIENT_ERRORS):
            raise _Transient(f"{type(e.reason).__name__}: {e.reason}") from None
        raise DownloadError(f"{url}: {e.reason}") from None
    except _TRANSIENT_ERRORS as e:
        raise _Transient(f"{type(e).__name__}: {e}") from None


def _read(resp: http.client.HTTPResponse) -> bytes:
    try:
        return resp.read(_CHUNK)
    except (*_TRANSIENT_ERRORS, http.client.HTTPException) as e:
        raise _Transient(f"{type(e).__name__} while reading") from None


def _attempt(opener: OpenerDirector, url: str, part: Path, desc: str, progress: bool) -> None:
    offset = _size(part)
    kept = validator_path(part)
    try:
        resp = _open(opener, url, offset, kept.read_text().strip() if offset and kept.exists() else None)
    except _StartOver:
        part.unlink()
        raise
    with resp:
        if offset and resp.status == 206 and not _resumes_at(resp, offset):
            part.unlink()
            raise _StartOver(f"the server resumed elsewhere than at byte {offset}")
        if offset and resp.status != 206:
            offset = 0  # no Range support, or the file changed (If-Range): the whole file again, from the start
        if offset == 0:
            validator = _validator(resp)
            if validator:
                kept.write_text(validator)
            else:
                kept.unlink(missing_ok=True)
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        first = _read(resp)
        if offset == 0 and (resp.headers.get_content_type() == "text/html" or first.lstrip()[:1] == b"<"):
            raise _Page((first + _read(resp)).decode("utf-8", "replace"), resp.geturl())
        with open(part, "ab" if offset else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                     disable=not progress, file=sys.stderr) as bar:
            block = first
            while block:
                out.write(block)
                bar.update(len(block))
                block = _read(resp)
    got = _size(part)
    if total is not None and got != total:
        raise _Transient(f"connection closed after {got} of {total} bytes")


def _resumes_at(resp: http.client.HTTPResponse, offset: int) -> bool:
    """Whether a 206 answer starts where the partial file ends (Content-Range: bytes START-END/TOTAL)."""
    unit, _, span = (resp.headers.get("Content-Range") or "").partition(" ")
    return unit == "bytes" and span.split("-", 1)[0] == str(offset)
