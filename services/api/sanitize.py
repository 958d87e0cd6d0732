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
  (the page's CSP then allows ``img-src https:`` for that response only). ``data:``
  and ``cid:`` images never show: deskmail does not serve a mail's inline parts.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def clean_mail_html(html: str, *, remote_images: bool = False) -> SafeHtml:
    """``html`` (a whole mail body or a fragment) with everything active removed."""
    blocked = 0

    def attribute(tag: str, name: str, value: str) -> str | None:
        nonlocal blocked
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
        url_schemes=set(URL_SCHEMES),
        url_relative="deny",
    )
    return SafeHtml(Markup(cleaned), blocked)  # noqa: S704 - nh3's output is the safe form
