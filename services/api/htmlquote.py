"""Where a reply's HTML starts quoting: the HTML counterpart of the router's
text split (services/router/replysplit.py).

The page shows a reply's new part and keeps the quoted history collapsed. In
the HTML rendering the history is an element that mail clients mark: Gmail's
``gmail_quote``, Outlook's ``divRplyFwdMsg`` (and ``appendonsend`` above its
rule), Thunderbird's ``moz-cite-prefix``, Apple Mail's and Thunderbird's
``<blockquote type="cite">``, Yandex's and Mail.ru's plain ``<blockquote>``
after an attribution line. ``split_html`` returns the HTML before and from
that element; the page sanitises both halves (nh3 closes what the cut left
open). It is called only for a reply whose text was split, so a mail the text
splitter kept whole (answers between quotes, a forward) stays whole here too.
"""

from __future__ import annotations

from html.parser import HTMLParser

from services.router.htmltext import html_to_text
from services.router.replysplit import is_attribution

__all__ = ["split_html"]


def _offset(html: str, line: int, column: int) -> int:
    """The character offset of HTMLParser's (line, column), which counts lines by "\n" only."""
    start = 0
    for _ in range(line - 1):
        start = html.index("\n", start) + 1
    return start + column

_BLOCKS = frozenset({"div", "p", "span", "font"})
_LONGEST_ATTRIBUTION = 300


class _Finder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cut: tuple[int, int] | None = None  # (line, column) where the quote starts
        self._depth = 0
        self._block: tuple[int, int] | None = None  # where the newest line started
        self._block_text: list[str] = []
        self._previous: tuple[tuple[int, int], str] | None = None  # the line before, when it held text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.cut is not None:
            return
        values = {name: (value or "") for name, value in attrs}
        classes = values.get("class", "").split()
        marked = (
            "gmail_quote" in classes or "moz-cite-prefix" in classes or "yahoo_quoted" in classes
            or values.get("id") in ("divRplyFwdMsg", "appendonsend")
            or (tag == "blockquote" and values.get("type", "").lower() == "cite")
        )
        if marked:
            self.cut = self.getpos()
        elif tag == "blockquote":
            # A plain blockquote quotes when an attribution stands right above
            # it (Yandex, Mail.ru): cut where that line starts, so it goes with
            # the quote. Without one, it is a quote the customer wrote.
            line = self._line()
            if line is None or not line[1]:
                line = self._previous  # "...wrote:<br><blockquote>"
            if line is not None and is_attribution(line[1]):
                self.cut = line[0]
        elif tag in _BLOCKS or tag == "br":
            # A line starts here: the attribution, if one follows, is its text.
            line = self._line()
            if line is not None and line[1]:
                self._previous = line
            self._block = self.getpos()
            self._block_text = []

    def _line(self) -> tuple[tuple[int, int], str] | None:
        if self._block is None:
            return None
        return self._block, " ".join("".join(self._block_text)[-_LONGEST_ATTRIBUTION:].split())

    def handle_data(self, data: str) -> None:
        if self.cut is None and data.strip():
            self._block_text.append(data)


def split_html(html: str) -> tuple[str, str | None]:
    """The reply's HTML up to its quoted history, and the history (None when
    no marked quote was found: the HTML stays whole)."""
    finder = _Finder()
    try:
        finder.feed(html)
        finder.close()
    except AssertionError:  # _markupbase on some malformed declarations
        return html, None
    if finder.cut is None:
        return html, None
    offset = _offset(html, *finder.cut)
    if not html_to_text(html[:offset]).strip():
        return html, None  # nothing new above the quote
    return html[:offset], html[offset:]
