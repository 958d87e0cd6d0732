"""The Jinja environment of the pages and the two things every page handler needs:
``render`` (a page with this browser's form token) and ``csrf_protect`` (the
dependency that refuses a form post without it).

Everything is escaped by Jinja's autoescape, in every template; a value that is
HTML on purpose (a mail's sanitised HTML, a search snippet's marks) is made so
in Python (``markupsafe.Markup``) after escaping what it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import Form, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from services.api import csrf
from services.common.units import human_size

TEMPLATES = Path(__file__).resolve().parent / "templates"

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value, in every template
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
templates.env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M UTC") if v else ""
templates.env.filters["size"] = human_size
templates.env.filters["status_label"] = lambda s: str(s).replace("_", " ")


def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """The page, with this browser's form token (a new one, and its cookie, when
    the browser has none that this api signed)."""
    tokens: csrf.CsrfTokens = request.app.state.csrf
    token = request.cookies.get(csrf.COOKIE) or ""
    fresh = not tokens.valid(token)
    if fresh:
        token = tokens.mint()
    sign_out = request.app.state.deskmail.config.api.auth.mode == "oidc"  # a session cookie to clear
    response = templates.TemplateResponse(request, name, {**values, "csrf_token": token, "sign_out": sign_out},
                                          status_code=status)
    if fresh:
        secure = (request.app.state.deskmail.config.api.public_url or "").startswith("https:")
        response.set_cookie(csrf.COOKIE, token, httponly=True, samesite="lax", secure=secure, path="/")
    return response


def fragment(name: str, **values: Any) -> str:
    """A partial template rendered to a string (the live updates' fragments)."""
    return templates.env.get_template(name).render(**values)


def csrf_protect(request: Request, csrf_token: str = Form("")) -> None:
    """Refuse a form post without this browser's signed token (403, with the reason).
    The Origin check is in ``services.api.security``."""
    tokens: csrf.CsrfTokens = request.app.state.csrf
    problem = tokens.refusal(request.cookies.get(csrf.COOKIE), csrf_token)
    if problem is not None:
        raise HTTPException(403, problem)
