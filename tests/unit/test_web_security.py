"""Which requests the api refuses (Host, Origin) and its form tokens, as tables."""

from __future__ import annotations

import textwrap

import pytest
from starlette.datastructures import Headers

from services.api.csrf import CsrfTokens
from services.api.security import SitePolicy, content_security_policy
from services.common.config import ConfigError, parse_text

FORM = "application/x-www-form-urlencoded"


def policy(api: str = "listen: 127.0.0.1:8080") -> SitePolicy:
    return SitePolicy.from_config(parse_text(textwrap.dedent(f"""\
        api:
          {api}
        """)))


def refusal(site: SitePolicy, method: str = "POST", path: str = "/tickets/T-1/reply", **headers: str) -> str | None:
    return site.refusal(method, path, Headers({k.replace("_", "-"): v for k, v in headers.items()}))


LOCAL = "http://127.0.0.1:8080"


@pytest.mark.parametrize(("method", "headers", "refused"), [
    ("GET", {"host": "127.0.0.1:8080"}, None),
    ("GET", {"host": "localhost:3000"}, None),
    ("GET", {"host": "[::1]:8080"}, None),
    ("GET", {"host": "evil.test"}, "Host 'evil.test' is not this deskmail's"),
    ("GET", {"host": "localhost.evil.test"}, "is not this deskmail's"),
    ("GET", {}, "Host '' is not this deskmail's"),
    ("GET", {"host": "127.0.0.1:8080", "origin": "https://evil.test"}, None),  # reading is not posting
    ("POST", {"host": "127.0.0.1:8080", "origin": LOCAL, "content_type": FORM}, None),
    ("POST", {"host": "127.0.0.1:8080", "origin": "https://evil.test", "content_type": FORM}, "another site"),
    ("POST", {"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:9999", "content_type": FORM}, "another site"),
    ("POST", {"host": "127.0.0.1:8080", "origin": "null", "content_type": FORM}, "Origin null"),
    ("POST", {"host": "127.0.0.1:8080", "content_type": FORM}, "without an Origin"),
    ("POST", {"host": "127.0.0.1:8080", "content_type": "multipart/form-data; boundary=x"}, "without an Origin"),
    ("POST", {"host": "127.0.0.1:8080", "content_type": "text/plain"}, "without an Origin"),
    ("POST", {"host": "127.0.0.1:8080"}, "without an Origin"),
    ("DELETE", {"host": "127.0.0.1:8080"}, "without an Origin"),
    # JSON needs a preflight cross-site: checked when an Origin comes with it
    ("POST", {"host": "127.0.0.1:8080", "content_type": "application/json"}, None),
    ("POST", {"host": "127.0.0.1:8080", "content_type": "application/json", "origin": LOCAL}, None),
    ("POST", {"host": "127.0.0.1:8080", "content_type": "application/json", "origin": "https://evil.test"},
     "another site"),
    ("POST", {"host": "127.0.0.1:8080", "content_type": "application/json", "origin": "null"}, "Origin null"),
    # a proxy that rewrites Host names the site in X-Forwarded-Host
    ("POST", {"host": "127.0.0.1:8080", "x_forwarded_host": "desk.example.com", "content_type": FORM,
              "origin": "https://desk.example.com"}, None),
])
def test_without_public_url(method: str, headers: dict[str, str], refused: str | None) -> None:
    problem = refusal(policy(), method, **headers)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem


@pytest.mark.parametrize(("headers", "refused"), [
    ({"host": "desk.example.com", "origin": "https://desk.example.com"}, False),
    ({"host": "127.0.0.1:8080", "origin": "https://desk.example.com"}, False),  # Host rewritten by the proxy
    ({"host": "desk.example.com", "origin": "http://desk.example.com:8443"}, True),
    ({"host": "other.example.com", "origin": "https://other.example.com"}, True),
    ({"host": "desk.example.com", "origin": "https://desk.example.com.evil.test"}, True),
])
def test_with_public_url(headers: dict[str, str], refused: bool) -> None:
    site = policy("public_url: https://Desk.Example.com:443/")
    assert site.public_origin == "https://desk.example.com"
    assert (refusal(site, content_type=FORM, **headers) is not None) == refused


def test_a_wildcard_listen_address_is_no_host_and_probes_need_none() -> None:
    site = policy("listen: 0.0.0.0:8080")
    assert refusal(site, "GET", "/", host="0.0.0.0:8080") is not None
    assert refusal(site, "GET", "/", host="localhost:8080") is None
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert refusal(site, "GET", probe, host="10.1.2.3:8080") is None
    assert refusal(policy("listen: 192.0.2.7:8080"), "GET", "/", host="192.0.2.7:8080") is None


@pytest.mark.parametrize("url", ["ftp://desk.example.com", "desk.example.com", "https://desk.example.com/desk",
                                 "https://user:pw@desk.example.com", "https://"])
def test_public_url_is_an_origin(url: str) -> None:
    with pytest.raises(ConfigError, match="public_url|http"):
        policy(f"public_url: {url!r}")


def test_the_policy_allows_remote_images_only_when_asked() -> None:
    strict = content_security_policy()
    assert "'unsafe-inline'" not in strict and "img-src 'self';" in strict
    assert "object-src 'none'" in strict and "frame-ancestors 'none'" in strict and "base-uri 'none'" in strict
    assert "img-src 'self' https:;" in content_security_policy(remote_images=True)


def test_form_tokens() -> None:
    tokens, other = CsrfTokens(b"k" * 32), CsrfTokens(b"o" * 32)
    token = tokens.mint()
    assert tokens.valid(token) and not other.valid(token) and tokens.mint() != token
    assert tokens.refusal(token, token) is None
    assert "no CSRF token" in (tokens.refusal(token, "") or "")
    assert "no CSRF cookie" in (tokens.refusal(None, token) or "")
    assert "does not match" in (tokens.refusal(token, tokens.mint()) or "")
    forged = token.split(".")[0] + ".x"
    assert "expired" in (tokens.refusal(forged, forged) or "")
    assert "expired" in (other.refusal(token, token) or "")
    for bad in ("", ".", "no-dot", "é.é", token + "x"):
        assert not tokens.valid(bad)
    assert "k" * 8 not in repr(tokens)


def test_an_unhandled_error_is_answered_with_the_security_headers_too() -> None:
    import warnings

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from services.api.security import BrowserGuard

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    def boom(request: object) -> PlainTextResponse:
        raise RuntimeError("a bug")

    app = Starlette(routes=[Route("/boom", boom)])
    app.add_middleware(BrowserGuard, site=policy(), refuse=lambda request, code, why: PlainTextResponse(why, code))
    response = TestClient(app, base_url="http://127.0.0.1:8080", raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert response.headers["content-security-policy"] == content_security_policy()
    assert response.headers["x-content-type-options"] == "nosniff"
    with pytest.raises(RuntimeError, match="a bug"):  # still raised to Starlette's handler, which logs it
        TestClient(app, base_url="http://127.0.0.1:8080").get("/boom")
