"""Splits a reply's new text from the quoted history and the signature block.

A customer's reply repeats the whole conversation below what they wrote, and
often their signature and ours. On the ticket, the comment shows the new text
and keeps the rest collapsed. ``split`` returns where the rest begins, as a
character offset into the text, or None to keep the text whole.

The text is the plain-text body the parser made (for HTML-only mail, from the
HTML: a ``blockquote`` becomes "> " lines, see htmltext). The quoted history
starts at the first of:

- an attribution line ("On <date>, <name> wrote:", "<date>, <name> пишет:",
  "... написал(а):", Gmail's Russian "вт, 1 дек. 2026 г. в 10:15, Name
  <addr>:", Yandex's "01.12.2026, 10:15, "Name" <addr>:", Mail.ru's "<day>,
  <date> от Name <addr>:", mutt's "* Name <addr> [<date>]:"), up to three
  lines long because clients wrap it, holding a digit (every client writes the
  date), and followed by "> " lines;
- Outlook's separator ("-----Original Message-----", "-----Исходное
  сообщение-----", a line of underscores) or its header block: "From:" /
  "От:" followed by at least two more of Sent/Date/To/Cc/Subject
  (Отправлено/Дата/Кому/Копия/Тема), which Outlook writes without "> ";
- a block of "> " lines that runs to the end of the text.

Above it, a signature block ("-- " or "--" on its own line, at most
SIGNATURE_LINES lines before the quote or the end) and a mobile client's
"Sent from my iPhone" line are split off with it.

Never lose words: when unsure, the text stays whole. So nothing is split when
the mail forwards another one (a forward is content, not history), when text
that is not quoted follows "> " lines (answers between the quotes, or below
them), when no new text would remain, or when an attribution-like line is not
followed by a quote ("On Monday I wrote to you:" in prose).
"""

from __future__ import annotations

import re

__all__ = ["SIGNATURE_LINES", "is_attribution", "split"]

# The longest signature block split off; a longer block after "--" is text.
SIGNATURE_LINES = 12
# How far an attribution may wrap, and how many blank lines may stand between
# it and its quote.
_WRAP = 3
_GAP = 2
_HEADER_LOOKAHEAD = 8  # lines in which an Outlook header block must show its labels

_VERBS = (
    r"wrote|writes|пишет|написала?|написал\(а\)|ответила?|schrieb|a écrit|escribió|ha scritto|schreef|skrev"
    r"|napisał\(a\)|napisał|napisała|kirjoitti|yazdı"
)
_VERB = re.compile(rf"\b(?:{_VERBS})\b", re.IGNORECASE)
_ENDS_WITH_ADDRESS = re.compile(r"@[^\s<>@]+>?:$")
_LONGEST_ATTRIBUTION = 300
# Separators, forward markers and a mobile client's line are short; longer
# lines are not tested for them.
_LONGEST_MARKER = 120
_SEPARATOR = re.compile(
    r"(?:-{2,}\s*(?:original message|исходное сообщение|ursprüngliche nachricht|message d'origine"
    r"|mensaje original|messaggio originale)\s*-{2,}|_{20,}|-{30,})",
    re.IGNORECASE,
)
_FROM_LABEL = re.compile(r"\*?(?:from|от|von|de|da)\*?\s*:\s*\*?\s*\S", re.IGNORECASE)
_HEADER_LABEL = re.compile(
    r"\*?(?:sent|date|to|cc|subject|отправлено|дата|кому|копия|тема|gesendet|an|betreff|envoyé|à|objet"
    r"|enviado|para|asunto|inviato|oggetto)\*?\s*:",
    re.IGNORECASE,
)
_FORWARD = re.compile(
    r"(?:-{3,}\s*(?:forwarded message|пересылаемое сообщение|пересланное сообщение|weitergeleitete nachricht"
    r"|message transféré|mensaje reenviado)\s*-{3,}|begin forwarded message:|начало переадресованного сообщения:"
    r"|-{3,}\s*(?:forwarded|переслано)\b.*)",
    re.IGNORECASE,
)
_MOBILE = re.compile(
    r"(?:(?:sent from my \w[\w ]{0,40}|sent from (?:mail|outlook) for \w+|get outlook for \w+"
    r"|sent from yandex ?mail for mobile|sent from mail\.ru (?:mobile|app)"
    r"|отправлено (?:с|из) (?:моего )?\S[\w .-]{0,40}|отправлено из мобильной (?:почты mail\.ru|яндекс[ .]почты)"
    r"|с уважением, отправлено с \w+)\.?(?:\s*<[^<>\s]{1,200}>)?)",
    re.IGNORECASE,
)


_WHOLE = -1  # _quote_start: keep the text whole (a forward, answers between quotes)


def split(text: str) -> int | None:
    """The offset in ``text`` where the quoted history (and the signature
    above it) begins, or None to keep the text whole."""
    raw = text.split("\n")
    starts = _line_starts(raw)
    # Patterns match stripped lines: a pattern that skips white space itself
    # would try again at every space of a long run of them.
    lines = [line.strip() for line in raw]
    cut = _quote_start(lines)
    if cut == _WHOLE:
        return None
    if cut is None:
        cut = len(lines)
    cut = _above_footer(lines, cut)
    if cut >= len(lines) or not any(lines[:cut]):
        return None
    return starts[cut]


def _line_starts(lines: list[str]) -> list[int]:
    starts, at = [], 0
    for line in lines:
        starts.append(at)
        at += len(line) + 1
    return starts


def _quote_start(lines: list[str]) -> int | None:
    """The line where the quote starts; None when there is none; _WHOLE when
    the text must stay whole."""
    labels = [bool(_HEADER_LABEL.match(line)) for line in lines]
    for i, line in enumerate(lines):
        if not line:
            continue
        if line.startswith(">"):
            return i if _only_quotes(lines, i) else _WHOLE
        short = len(line) <= _LONGEST_MARKER
        if short and _FORWARD.fullmatch(line):
            return _WHOLE  # a forward is content: keep everything, its signature too
        if short and _SEPARATOR.fullmatch(line) and _header_block(lines, labels, _next_text(lines, i + 1)):
            return i
        if _header_block(lines, labels, i):
            return i
        end = _attribution_end(lines, i)
        if end is not None:
            return i if _only_quotes(lines, _next_text(lines, end + 1)) else _WHOLE
    return None


def _next_text(lines: list[str], i: int) -> int:
    while i < len(lines) and not lines[i]:
        i += 1
    return i


def _only_quotes(lines: list[str], i: int) -> bool:
    """Lines from ``i`` on are a quote to the end: at least one, every line
    that is not blank starts with ">", and none quotes a forward (a forward
    quoted is still content to keep)."""
    rest = [line for line in lines[i:] if line]
    return bool(rest) and all(line.startswith(">") for line in rest) and not any(
        len(line) <= _LONGEST_MARKER and _FORWARD.fullmatch(line.lstrip("> ")) for line in rest[:3])


def _attribution_end(lines: list[str], i: int) -> int | None:
    """The last line of an attribution that starts at line ``i`` and is
    followed, after at most _GAP blank lines, by a quoted line; else None."""
    if not any(line.endswith(":") for line in lines[i:i + _WRAP]):
        return None
    joined = ""
    for end in range(i, min(i + _WRAP, len(lines))):
        if end > i and not lines[end]:
            return None
        joined = f"{joined} {lines[end]}".strip()
        if len(joined) > _LONGEST_ATTRIBUTION:
            return None
        if is_attribution(joined):
            if end > i and is_attribution(" ".join(lines[i + 1:end + 1])):
                return None  # it starts on a later line: the lines above are the reply's own
            after = _next_text(lines, end + 1)
            if after - end - 1 <= _GAP and after < len(lines) and lines[after].startswith(">"):
                return end
    return None


def is_attribution(line: str) -> bool:
    """The line introduces a quote: it ends with ":", holds a date's digits,
    and names the writer ("... wrote:", "... пишет:", "..., Name <addr>:").
    Plain string tests and searches that cannot backtrack far: the line comes from anybody."""
    if not line.endswith(":") or not any(ch.isdigit() for ch in line):
        return False
    head = line[:-1].rstrip()
    if _VERB.search(head[-120:]):  # "... wrote:", "... пишет:", "... написал(а):"
        return True
    if head.endswith(('"', "»")):  # Yandex without the address: '01.12.2026, 10:15, "Name":'
        return True
    if head.endswith("]"):  # mutt: "* Name <addr> [2026-12-01 10:15]:"
        return "@" in head
    return bool(_ENDS_WITH_ADDRESS.search(head + ":"))  # "..., Name <addr>:"


def _header_block(lines: list[str], labels: list[bool], i: int) -> bool:
    """Outlook's header block starts at line ``i``: a From label and at least
    two other header labels (``labels``: which lines start with one) within
    the next lines."""
    if i >= len(lines) or not _FROM_LABEL.match(lines[i]):
        return False
    return sum(labels[i + 1:i + 1 + _HEADER_LOOKAHEAD]) >= 2


def _above_footer(lines: list[str], cut: int) -> int:
    """Move ``cut`` up over a signature block and a mobile client's line that
    stand right above it."""
    last = cut - 1
    while last >= 0 and not lines[last]:
        last -= 1
    if last >= 0 and len(lines[last]) <= _LONGEST_MARKER and _MOBILE.fullmatch(lines[last]):
        cut = last
    for sig in range(cut - 1, max(-1, cut - 1 - SIGNATURE_LINES - 1), -1):
        if lines[sig] == "--":  # "-- " stripped; RFC 3676's separator, which many clients send without the space
            return sig
    return cut
