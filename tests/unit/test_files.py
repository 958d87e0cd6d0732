"""How attachments are served: their type, their name, their disposition."""

from __future__ import annotations

import pytest

from services.api.files import content_disposition, safe_filename, served_type

OPAQUE = "application/octet-stream"


@pytest.mark.parametrize(("declared", "served"), [
    ("image/png", "image/png"),
    ("IMAGE/JPEG", "image/jpeg"),
    ("image/gif", "image/gif"),
    ("image/webp", "image/webp"),
    ("application/pdf", "application/pdf"),
    ("text/plain; charset=iso-8859-1", "text/plain"),
    ("text/html", OPAQUE),
    ("text/html; charset=utf-8", OPAQUE),
    ("application/xhtml+xml", OPAQUE),
    ("image/svg+xml", OPAQUE),
    ("text/xml", OPAQUE),
    ("application/xml", OPAQUE),
    ("application/javascript", OPAQUE),
    ("text/css", OPAQUE),
    ("multipart/x-mixed-replace", OPAQUE),
    ("application/x-shockwave-flash", OPAQUE),
    ("", OPAQUE),
    ("image/png\r\nX-Injected: 1", OPAQUE),
])
def test_only_inert_types_keep_their_type(declared: str, served: str) -> None:
    assert served_type(declared) == served


@pytest.mark.parametrize(("name", "safe"), [
    ("invoice.pdf", "invoice.pdf"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\carol\\report.docx", "report.docx"),
    (".htaccess", "htaccess"),
    ("name. . .", "name"),
    ("evil\u202egpj.exe", "evilgpj.exe"),  # the right-to-left override that disguises .exe
    ("line\r\nbreak.txt", "linebreak.txt"),
    ("tab\there.txt", "tabhere.txt"),
    ("", "attachment"),
    ("../", "attachment"),
    ("Köln Übersicht.pdf", "Köln Übersicht.pdf"),
    ("a" * 300 + ".pdf", "a" * 146 + ".pdf"),
])
def test_file_names_lose_folders_and_invisible_characters(name: str, safe: str) -> None:
    assert safe_filename(name) == safe


@pytest.mark.parametrize(("name", "header"), [
    ("invoice.pdf", "attachment; filename=\"invoice.pdf\"; filename*=UTF-8''invoice.pdf"),
    ('say "hi"; x=1.txt', "attachment; filename=\"say _hi__ x=1.txt\"; filename*=UTF-8''say%20%22hi%22%3B%20x%3D1.txt"),
    ("Köln.pdf", "attachment; filename=\"K_ln.pdf\"; filename*=UTF-8''K%C3%B6ln.pdf"),
    ("<script>.html", "attachment; filename=\"<script>.html\"; filename*=UTF-8''%3Cscript%3E.html"),
    ("100%.txt", "attachment; filename=\"100_.txt\"; filename*=UTF-8''100%25.txt"),
    ("back\\slash", "attachment; filename=\"slash\"; filename*=UTF-8''slash"),
])
def test_disposition_is_always_attachment_with_both_names(name: str, header: str) -> None:
    assert content_disposition(name) == header
    assert "\r" not in header and "\n" not in header
