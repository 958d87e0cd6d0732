"""Mail HTML made safe to show on deskmail's own page: the only way mail HTML reaches a page.

Everything in a mail may come from an attacker, so the HTML is rebuilt by nh3
(html5ever's parser, ammonia's allow-list) from a short list of text-formatting
tags. What survives cannot run code, post anything, frame anything or load
anything:

* no script, style, form, iframe, object, embed, svg or math: gone with their content;
  any other unknown tag is dropped and its text kept;
* no event handlers, no ``style``, ``class``, ``id`` or ``name`` attributes (inline
  style would break the page's CSP; classes would borrow the page's own look; ids and
  names could shadow the page's elements for its script);
* links are http(s) or mailto only, never relative (a relative URL would point into
  deskmail itself), and open with ``rel="noopener noreferrer nofollow"``;
* images load from nowhere by default: ``src`` is removed and counted, so the page can
  offer "load images"; with ``remote_images`` only ``https:`` images keep their source
  (the page's CSP then allows ``img-src https:`` for that response only). A ``cid:``
  image shows the mail's own inline part when the caller names it (``inline``: its
  Content-ID and deskmail's address for it); other ``cid:`` and all ``data:`` images
  never show.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

import nh3
from markupsafe import Markup

__all__ = ["SafeHtml", "clean_mail_html"]

TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd", "del",
    "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
    "ol", "p", "pre", "q", "s", "small", "span", "strike", "strong", "sub", "sup", "table", "tbody",
    "td", "tfoot", "th", "thead", "tr", "u", "ul",
})
# Removed together with their content: code, style sheets, and content that only
# makes sense as what it is (a form's options, a frame's fallback, a document's head).
DROPPED_WITH_CONTENT = frozenset({
    "script", "style", "title", "head", "noscript", "template", "iframe", "frame", "frameset",
    "object", "embed", "applet", "svg", "math", "select", "textarea", "button",
})
ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start"},
    "*": {"dir", "lang", "title"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto"})


@dataclass(frozen=True)
class SafeHtml:
    """Sanitised mail HTML, ready to insert; ``blocked_images`` counts the https
    images left out because remote images were not asked for."""

    html: Markup
    blocked_images: int


def clean_mail_html(html: str, *, remote_images: bool = False, inline: Mapping[str, str] | None = None) -> SafeHtml:
    """``html`` (a whole mail body or a fragment) with everything active removed;
    ``inline`` maps a lower-case Content-ID to the same-origin path that serves
    that part of the mail."""
    blocked = 0
    # nh3 refuses relative URLs (a link into deskmail itself); an inline image
    # passes it as an https URL on a host only this call knows, then becomes
    # deskmail's own path.
    nonce = secrets.token_hex(8)
    paths = list((inline or {}).values())
    numbers = {cid: i for i, cid in enumerate((inline or {}))}

    def attribute(tag: str, name: str, value: str) -> str | None:
        nonlocal blocked
        if value.strip().lower().startswith("cid:"):  # nh3 lets the scheme through to here
            if tag != "img" or name != "src":
                return None
            cid = unquote(value.strip()[4:]).strip().strip("<>").lower()
            return f"https://{nonce}.invalid/{numbers[cid]}" if cid in numbers else None
        if tag == "img" and name == "src":
            if not value.strip().lower().startswith("https://"):
                return None  # http: would be blocked by the CSP anyway; data:, cid: never show
            if not remote_images:
                blocked += 1
                return None
        return value

    cleaned = nh3.clean(
        html,
        tags=set(TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
        attribute_filter=attribute,
        strip_comments=True,
        link_rel="noopener noreferrer nofollow",
        url_schemes={*URL_SCHEMES, "cid"},  # cid: only as far as the attribute filter, which resolves or drops it
        url_relative="deny",
    )
    if paths:
        marker = re.compile(f'src="https://{nonce}\\.invalid/(\\d+)"')
        cleaned = marker.sub(lambda m: f'src="{paths[int(m.group(1))]}"', cleaned)
    return SafeHtml(Markup(cleaned), blocked)  # noqa: S704 - nh3's output is the safe form
