"""Google Drive's confirmation page for large files, read without a Drive client.

Drive answers a download request for a file too large to virus-scan with an HTML
page instead of the file. The page carries the real address, in one of the forms
Drive has used:
- a ``<form id="download-form" action=".../download">`` whose hidden inputs
  (id, export, confirm, uuid, ...) make the query string (2024 onwards);
- a link ``/uc?export=download&confirm=TOKEN&id=ID`` (older pages; the token also
  sits in a ``download_warning`` cookie, which the downloader's cookie jar keeps);
- a ``"downloadUrl":"..."`` JSON string (the viewer page).
The same page with none of these is an error (quota exceeded, no access), whose
title the downloader reports. Reading the page here, rather than through gdown,
keeps one downloader for Drive and Dropbox that can be tested against a local server.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin


class _PageReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.form_action: str | None = None
        self.form_fields: list[tuple[str, str]] = []
        self.confirm_links: list[str] = []
        self.title = ""
        self._in_form = self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id") == "download-form":
            self.form_action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("type") == "hidden" and a.get("name"):
            self.form_fields.append((a["name"], a.get("value", "")))
        elif tag == "a" and "confirm=" in a.get("href", "") and "export=download" in a.get("href", ""):
            self.confirm_links.append(a["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def confirmation_url(page: str, base_url: str) -> str | None:
    """The 'Download anyway' address of a Drive confirmation page, or None if ``page`` is not one."""
    reader = _PageReader()
    reader.feed(page)
    if reader.form_action is not None and reader.form_fields:
        return urljoin(base_url, reader.form_action) + "?" + urlencode(reader.form_fields)
    if reader.confirm_links:
        return urljoin(base_url, reader.confirm_links[0])
    m = re.search(r'"downloadUrl":("[^"]+")', page)
    return json.loads(m.group(1)) if m else None


def page_title(page: str) -> str:
    """The page's title in one line (what an error page says went wrong), or ''."""
    reader = _PageReader()
    reader.feed(page)
    return " ".join(reader.title.split())[:120]
