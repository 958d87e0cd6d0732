"""Readable plain text from an HTML mail body, with the stdlib ``html.parser``.

Used when a mail has no text/plain part. The output keeps what a reader needs
(paragraphs, line breaks, list items, quoted replies, link targets) and drops
what a mail client would not show (head, scripts, styles, comments).
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

__all__ = ["html_to_text"]

# Content a mail client does not render. script and style bodies are raw text to
# HTMLParser, so nothing inside them can end the skip early.
_HIDDEN = frozenset({"script", "style", "head", "title", "template"})
# Blank line before and after.
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "pre", "dl", "hr",
     "address", "figure", "form", "fieldset", "blockquote", "ul", "ol"}
)
# Line break before and after.
_LINE = frozenset(
    {"div", "tr", "li", "dt", "dd", "section", "article", "header", "footer",
     "nav", "main", "aside", "center", "caption", "thead", "tbody", "tfoot",
     "body", "html", "figcaption", "details", "summary"}
)
_LISTS = frozenset({"ul", "ol"})
# Invisible characters used to pad preheaders in newsletters.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u034f\u00ad"))
# Marked sections other than CDATA (e.g. "<![foo[") make _markupbase raise
# AssertionError; Word's "<![if ...]>"/"<![endif]>" carry nothing to show either.
_MARKED_SECTION = re.compile(r"<!\[(?!CDATA\[)[^>]*(?:>|$)")
_BLANK_RUNS = re.compile(r"\n{3,}")
_TAG = re.compile(r"<[^>]*>")


def html_to_text(html: str) -> str:
    """Convert an HTML document or fragment to plain text; never raises."""
    html = _MARKED_SECTION.sub("", html)
    converter = _Converter()
    try:
        converter.feed(html)
        converter.close()
    except AssertionError:
        # A marked section the removal above could not catch (one formed by the
        # removal itself). Dropping the tags beats losing the body.
        text = unescape(_TAG.sub(" ", html)).translate(_INVISIBLE)
        return _tidy("\n".join(" ".join(line.split()) for line in text.split("\n")))
    return converter.text()


def _tidy(text: str) -> str:
    """Strip trailing spaces, collapse runs of blank lines, trim blank edges."""
    lines = [line.rstrip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip("\n")


def _link_target(href: str) -> str:
    """The part of a link worth comparing with its text."""
    target = href.strip()
    for prefix in ("mailto:", "tel:", "https://", "http://"):
        if target.lower().startswith(prefix):
            target = target[len(prefix):]
            break
    return target.rstrip("/").lower()


class _Converter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._newlines = 0  # newlines at the end of _out
        self._wanted = 0  # line breaks wanted before the next text
        self._space = False  # a space is wanted before the next text
        self._hidden: str | None = None  # element whose content is being skipped
        self._pre = 0
        self._quote = 0
        self._lists: list[list[int]] = []  # per open list: [is_ordered, items so far]
        self._marker = ""  # list marker owed to the next text
        self._links: list[tuple[str, int]] = []  # (href, index in _out where the text starts)
        self._mso_paragraphs: list[int] = []  # len(_out) when an Outlook paragraph opened
        self._row_start = 0  # len(_out) when the current table row opened
        self._cell = False  # a table cell opened after text in its row: " | " before the next text

    # -- output ---------------------------------------------------------

    def text(self) -> str:
        return _tidy("".join(self._out))

    def _block(self, breaks: int) -> None:
        self._wanted = max(self._wanted, breaks)
        self._space = False
        self._cell = False

    def _line_start(self) -> str:
        prefix = "> " * self._quote
        if self._lists:
            prefix += "  " * (len(self._lists) - 1)
        return prefix + self._marker

    def _write(self, chunk: str) -> None:
        """Append text that is already whitespace-normalised (or preformatted)."""
        if not self._out:
            self._out.append(self._line_start())
            self._marker = ""
        else:
            if self._wanted > self._newlines:
                self._out.append("\n" * (self._wanted - self._newlines))
                self._newlines = self._wanted
            if self._newlines:
                self._out.append(self._line_start())
                self._marker = ""
            elif self._cell:
                self._out.append(" | ")
            elif self._space:
                self._out.append(" ")
        self._out.append(chunk)
        self._cell = False
        self._newlines = 0
        self._wanted = 0
        self._space = False

    def _break(self) -> None:
        """A forced line break (<br>): consecutive ones make blank lines."""
        if not self._out:
            return
        missing = max(self._wanted - self._newlines, 0)
        self._out.append("\n" * (missing + 1))
        self._newlines += missing + 1
        self._wanted = 0
        self._space = False

    # -- parser callbacks -----------------------------------------------

    def handle_data(self, data: str) -> None:
        if self._hidden is not None:
            return
        if not data.isascii():
            data = data.translate(_INVISIBLE)
        if self._pre:
            lines = data.split("\n")
            for index, line in enumerate(lines):
                if index:
                    self._break()
                if line:
                    self._write(line)
            return
        words = data.split()
        if not words:
            if data:
                self._space = True
            return
        if data[0].isspace():
            self._space = True
        self._write(" ".join(words))
        if data[-1].isspace():
            self._space = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            # A broken head or title must not swallow the whole body.
            self._hidden = None
        if self._hidden is not None:
            return
        if tag in _HIDDEN:
            self._hidden = tag
            return
        if tag == "br":
            self._break()
        elif tag in ("td", "th"):
            # Cells of a row stay apart: "Printer | 2", not "Printer 2".
            self._space = True
            self._cell = len(self._out) > self._row_start and not self._newlines
        elif tag == "a":
            href = next((value for name, value in attrs if name == "href"), None) or ""
            self._links.append((href, len(self._out)))
        elif tag == "p" and any(n == "class" and v and v.startswith("Mso") for n, v in attrs):
            # Outlook writes one <p class=MsoNormal> per line and an empty one
            # for a blank line, so these are lines, not paragraphs.
            self._block(1)
            self._mso_paragraphs.append(len(self._out))
            return
        if tag in _PARAGRAPH:
            self._block(1 if tag in _LISTS and self._lists else 2)
        elif tag in _LINE:
            self._block(1)
        if tag == "tr":
            self._row_start = len(self._out)
        if tag == "blockquote":
            self._quote += 1
        elif tag == "pre":
            self._pre += 1
        elif tag in _LISTS:
            self._lists.append([tag == "ol", 0])
        elif tag == "li":
            if self._lists:
                current = self._lists[-1]
                current[1] += 1
                self._marker = f"{current[1]}. " if current[0] else "- "
            else:
                self._marker = "- "

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <hr/>, <p/>: no content follows, so do not open a skip or a link.
        if tag in _HIDDEN or tag == "a":
            return
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "td", "th"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._hidden is not None:
            if tag == self._hidden:
                self._hidden = None
            return
        if tag == "a":
            if self._links:
                self._close_link(*self._links.pop())
            return
        if tag == "p" and self._mso_paragraphs:
            opened = self._mso_paragraphs.pop()
            if len(self._out) == opened:
                self._break()
            self._block(1)
            return
        if tag in _PARAGRAPH:
            self._block(1 if tag in _LISTS and len(self._lists) > 1 else 2)
        elif tag in _LINE:
            self._block(1)
        if tag == "blockquote" and self._quote:
            self._quote -= 1
        elif tag == "pre" and self._pre:
            self._pre -= 1
        elif tag in _LISTS and self._lists:
            self._lists.pop()
        elif tag == "li":
            self._marker = ""

    def _close_link(self, href: str, start: int) -> None:
        label = " ".join("".join(self._out[start:]).split())
        if not label or not href or href.startswith(("#", "javascript:", "cid:")):
            return
        if _link_target(href) != _link_target(label):
            self._space = True
            self._write(f"({href.strip()})")
