"""The mail HTML sanitiser as a table: what goes in, what the page may show."""

from __future__ import annotations

import pytest
from markupsafe import Markup

from services.api.sanitize import clean_mail_html

REL = 'rel="noopener noreferrer nofollow"'

CASES = [
    # (what the mail says, what the page shows)
    ("<p>Hello <b>there</b></p>", "<p>Hello <b>there</b></p>"),
    ("<script>alert(1)</script>ok", "ok"),
    ("<SCRIPT SRC=https://evil.test/x.js></SCRIPT>ok", "ok"),
    ('<p onclick="alert(1)" onmouseover=alert(2)>hi</p>', "<p>hi</p>"),
    ("<body onload=alert(1)>b</body>", "b"),
    ('<a href="javascript:alert(1)">x</a>', f"<a {REL}>x</a>"),
    ('<a href=" JaVaScRiPt:alert(1)">x</a>', f"<a {REL}>x</a>"),
    ('<a href="java&#x09;script:alert(1)">x</a>', f"<a {REL}>x</a>"),
    ('<a href="vbscript:msgbox(1)">x</a>', f"<a {REL}>x</a>"),
    ('<a href="data:text/html,<script>alert(1)</script>">x</a>', f"<a {REL}>x</a>"),
    ('<a href="/tickets/SUPPORT-1/reply">relative into deskmail</a>', f"<a {REL}>relative into deskmail</a>"),
    ('<a href="https://ok.test/a?b=1&c=2" target="_top">ok</a>', f'<a href="https://ok.test/a?b=1&amp;c=2" {REL}>ok</a>'),
    ('<a href="mailto:carol@customer.test">mail</a>', f'<a href="mailto:carol@customer.test" {REL}>mail</a>'),
    ('<img src="data:image/svg+xml;base64,PHN2Zz4=">', "<img>"),
    ('<img src="x" onerror="alert(1)">', "<img>"),
    ('<img src="cid:part1@mail">', "<img>"),
    ('<img src="http://tracker.test/p.gif">', "<img>"),
    ('<img srcset="https://tracker.test/p.gif 1x" alt="logo">', '<img alt="logo">'),
    ('<svg onload="alert(1)"><script>alert(2)</script><text>t</text></svg>after', "after"),
    ('<math><mi xlink:href="javascript:alert(1)">m</mi></math>after', "after"),
    ("<style>body{display:none}</style>text", "text"),
    ('<div style="background:url(javascript:alert(1));width:expression(alert(2))">css</div>', "<div>css</div>"),
    ('<p style="color:red" class="badge" id="status-1" name="x">clobber</p>', "<p>clobber</p>"),
    ('<table background="https://tracker.test/bg.png"><tr><td bgcolor=red>c</td></tr></table>',
     "<table><tbody><tr><td>c</td></tr></tbody></table>"),
    ('<form action="https://evil.test"><input name="q" value="v"><button>Go</button></form>', ""),
    ('<iframe src="https://evil.test"></iframe><object data="x.swf"></object><embed src="y">after', "after"),
    ('<base href="https://evil.test/"><meta http-equiv="refresh" content="0;url=https://evil.test">t', "t"),
    ('<link rel="stylesheet" href="https://evil.test/x.css">t', "t"),
    ("<!-- [if mso]><script>alert(1)</script><![endif] -->t", "t"),
    ("<html><head><title>Subject</title></head><body><p>b</p></body></html>", "<p>b</p>"),
    ("<textarea><script>alert(1)</script></textarea>t", "t"),
    ('<noscript><img src=x onerror=alert(1)></noscript>t', "t"),
    ('<p>a<unknown-tag attr="1">kept text</unknown-tag></p>', "<p>akept text</p>"),
    ("<td colspan=2 onclick=x>cell</td>", "cell"),  # a stray cell outside a table is only its text
    ("<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ('"><script>alert(1)</script>', "\"&gt;"),
]


@pytest.mark.parametrize(("html", "shown"), CASES)
def test_the_page_shows_only_inert_html(html: str, shown: str) -> None:
    result = clean_mail_html(html)
    assert str(result.html) == shown
    assert isinstance(result.html, Markup)  # inserted as is; only this module makes Markup


def test_remote_images_are_counted_and_shown_only_when_asked() -> None:
    html = '<p>Hi</p><img src="https://tracker.test/p.gif" alt="p"><img src="https://cdn.test/logo.png">'
    blocked = clean_mail_html(html)
    assert str(blocked.html) == '<p>Hi</p><img alt="p"><img>' and blocked.blocked_images == 2
    loaded = clean_mail_html(html, remote_images=True)
    assert str(loaded.html) == '<p>Hi</p><img src="https://tracker.test/p.gif" alt="p"><img src="https://cdn.test/logo.png">'
    assert loaded.blocked_images == 0


def test_images_that_never_load_are_not_counted_as_blocked() -> None:
    # the page's CSP would refuse http: and data:, and deskmail serves no cid: parts
    html = '<img src="http://t.test/a.gif"><img src="data:image/png;base64,AA=="><img src="cid:x">'
    for remote in (False, True):
        result = clean_mail_html(html, remote_images=remote)
        assert str(result.html) == "<img><img><img>" and result.blocked_images == 0


def test_an_inline_image_shows_the_mails_own_part() -> None:
    html = ('<p><img src="cid:Logo@Customer.test" alt="logo"><img src="cid:%3Cchart@customer.test%3E">'
            '<img src="cid:unknown@customer.test"><a href="cid:logo@customer.test">link</a></p>')
    inline = {"logo@customer.test": "/tickets/SUPPORT-1/files/0", "chart@customer.test": "/tickets/SUPPORT-1/files/1"}
    cleaned = str(clean_mail_html(html, inline=inline).html)
    assert '<img src="/tickets/SUPPORT-1/files/0" alt="logo">' in cleaned
    assert '<img src="/tickets/SUPPORT-1/files/1">' in cleaned
    assert cleaned.count("src=") == 2 and "cid:" not in cleaned  # an unknown part, a cid link: gone
    # without the map no cid image shows
    assert "src=" not in str(clean_mail_html(html).html)


def test_a_mail_cannot_forge_the_inline_marker() -> None:
    # The marker's host is random per call: a mail that guesses the form is a remote image.
    html = '<img src="https://0000000000000000.invalid/0">'
    result = clean_mail_html(html, inline={"logo@customer.test": "/tickets/SUPPORT-1/files/0"})
    assert "/tickets/" not in str(result.html) and result.blocked_images == 1
