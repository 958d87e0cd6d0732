"""Which charset a mail's text really is in, when its label is missing or wrong.

Mail from old Windows and Russian clients often sends 8-bit text without a
charset, with one its bytes are not valid in, or labelled with the wrong
Cyrillic code page (koi8-r sent as windows-1251, Windows text sent as
iso-8859-1). Decoding such text as labelled gives mojibake ("яВ╦Р НОКЮВЕМ"
for "Счёт оплачен"), which agents cannot read or search.

``detect`` chooses among a fixed set of candidates only: UTF-8, the five
Cyrillic code pages and windows-1252, the charsets that our users' mail is
actually in. charset-normalizer decodes the candidates and drops those whose
text looks like noise; for text too short for its language statistics (a
subject, a two-line reply) the remaining ones are ranked by ``plausibility``:
Russian letter frequencies, no Cyrillic letter glued to a Latin one, no
capital after a small letter within a word, no box drawing or stray symbols.
A text only switches away from its label when another candidate is clearly
more plausible (MARGIN), so a correct label always wins a tie.
"""

from __future__ import annotations

import codecs
import math
import re
from collections import Counter
from dataclasses import dataclass

import charset_normalizer

__all__ = ["CANDIDATES", "CYRILLIC", "Detected", "detect", "mislabelled", "plausibility"]

# Python's own codec names (codecs.lookup(label).name), as the parser uses them.
CYRILLIC = ("cp1251", "koi8-r", "cp866", "iso8859-5", "mac-cyrillic")
LATIN = ("cp1252",)
CANDIDATES = ("utf-8", *CYRILLIC, *LATIN)
# Another decoding replaces the declared charset only when it is more
# plausible by EVIDENCE in all (a log-likelihood ratio: e**8 is about 3,000
# times likelier) and by MARGIN per non-ASCII character: a label is believed
# for a text too short to tell.
EVIDENCE = 8.0
MARGIN = 0.25
# detect: a later candidate must be this much more plausible than an earlier one.
_ORDER_BONUS = 0.05
# Bytes read for a decision: the beginning of a long text decides for all of it.
SAMPLE_BYTES = 16_384
# mislabelled() runs for every body with a Cyrillic or Western label: a
# shorter sample, which is plenty of evidence.
LABEL_SAMPLE_BYTES = 4_096

# Letter frequencies of Russian text (per cent).
_RUSSIAN = dict(zip(
    "оеаинтсрвлкмдпуяыьгзбчйхжшюцщэфъё",
    (10.97, 8.45, 8.01, 7.35, 6.70, 6.26, 5.47, 4.73, 4.54, 4.40, 3.49, 3.21, 2.98, 2.81, 2.62, 2.01, 1.90,
     1.74, 1.70, 1.65, 1.59, 1.44, 1.21, 0.97, 0.94, 0.73, 0.64, 0.48, 0.36, 0.32, 0.26, 0.04, 0.20),
    strict=True,
))
_LOG_RUSSIAN = {letter: math.log(share / 100) for letter, share in _RUSSIAN.items()}
_LOG_ACCENTED = math.log(0.004)  # an accented Latin letter within a Latin word (é in Café)
_LOG_STRAY = math.log(0.00005)  # a symbol or letter no Russian or Western text has in this place
_GLUED = 8.0  # a Cyrillic letter next to a Latin one
_CAPITAL_INSIDE = 4.0  # a capital after a small letter
# Non-ASCII punctuation and symbols that texts in any candidate hold, with
# their own small probabilities (a code page's wrong reading of capitals is
# often quotes and dashes: they must not be free).
_LOG_SYMBOL = {**dict.fromkeys("«»„“”‘’—–…№\u00a0", math.log(0.01)),
               **dict.fromkeys("°±×€£§©®™•", math.log(0.001))}
# Each character's score before its neighbours are looked at.
_SCORES = {**_LOG_SYMBOL, **_LOG_RUSSIAN, **{ch.upper(): p for ch, p in _LOG_RUSSIAN.items()}}


@dataclass(frozen=True)
class Detected:
    text: str
    codec: str  # a Python codec name, e.g. "cp1251", "koi8-r"


def plausibility(text: str) -> float:
    """Mean log-probability of the text's non-ASCII characters as Russian or
    Western text; 0.0 for text that is all ASCII. Higher is more plausible."""
    total, counted = _evidence(text)
    return total / counted if counted else 0.0


_ASCII_RUN = re.compile(r"[\x00-\x7f\u200b\ufeff]+")
_CYRILLIC_LETTER = "а-яёА-ЯЁ"
_GLUED_PAIR = re.compile(f"(?<=[A-Za-z])[{_CYRILLIC_LETTER}]|[{_CYRILLIC_LETTER}](?=[A-Za-z])")
_LATIN_LETTER = re.compile("[A-Za-z]")
_CAPITAL_PAIR = re.compile("(?<=[а-яё])[А-ЯЁ]")
_ACCENTED_IN_WORD = re.compile("(?<=[A-Za-z])[À-ÖØ-öø-ſ]|[À-ÖØ-öø-ſ](?=[A-Za-z])")


def _evidence(text: str) -> tuple[float, int]:
    """The summed log-probability of the text's non-ASCII characters, and
    their number. Counted with regular expressions and a table, not a loop
    per character: this runs for every decoding of a candidate."""
    others = _ASCII_RUN.sub("", text)
    if not others:
        return 0.0, 0
    total = sum(_SCORES.get(ch, _LOG_STRAY) * n for ch, n in Counter(others).items())
    total -= _GLUED * len(_GLUED_PAIR.findall(text))
    total -= _CAPITAL_INSIDE * len(_CAPITAL_PAIR.findall(text))
    total += (_LOG_ACCENTED - _LOG_STRAY) * len(_ACCENTED_IN_WORD.findall(text))
    return total, len(others)


def _strict(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        return None


def detect(data: bytes, exclude: str | None = None) -> Detected | None:
    """The most plausible strict decoding of ``data`` among CANDIDATES (not
    ``exclude``); None when none decodes it. Valid UTF-8 with non-ASCII bytes
    is UTF-8: other charsets' text is almost never valid UTF-8 by chance."""
    if exclude != "utf-8":
        text = _strict(data, "utf-8")
        # Beyond the Basic Multilingual Plane: a few bytes of another charset
        # that happen to form a valid 4-byte sequence.
        if text is not None and all(ch <= "\uffff" for ch in text):
            return Detected(text, "utf-8")
    sample = data[:SAMPLE_BYTES]
    # charset-normalizer decodes the sample with each candidate and leaves out
    # those whose text it finds too chaotic; an empty result means it left
    # out all of them, and then plausibility decides alone.
    isolation = [c for c in CANDIDATES if c not in ("utf-8", exclude)]
    matches = charset_normalizer.from_bytes(sample, cp_isolation=isolation)
    kept = {codecs.lookup(m.encoding).name for m in matches} or set(isolation)
    best: tuple[float, str] | None = None
    for rank, codec in enumerate(isolation):  # ties: the earlier candidate (cp1251 before koi8-r ...)
        if codec not in kept:
            continue
        text = _strict(sample, codec)
        if text is None:
            continue
        score = plausibility(text) - _ORDER_BONUS * rank
        if best is None or score > best[0]:
            best = (score, codec)
    if best is None:
        return None
    text = _strict(data, best[1])
    return Detected(text, best[1]) if text is not None else None


def mislabelled(text: str, data: bytes, codec: str) -> Detected | None:
    """When ``data``, decoded as its declared single-byte ``codec`` into
    ``text``, reads far better in another Cyrillic code page or windows-1252
    (or, for windows-1252 text that is mostly non-ASCII letters, in a
    Cyrillic one), that decoding; else None. UTF-8 sent with a single-byte
    label (a client that re-encoded nothing but kept its default label) is
    UTF-8, as in ``detect``: such a code page's text is not valid UTF-8 by chance."""
    if codec in (*CYRILLIC, *LATIN, "iso8859_15") and not data.isascii():
        as_utf8 = _strict(data, "utf-8")
        if as_utf8 is not None and all(ch <= "\uffff" for ch in as_utf8):
            return Detected(as_utf8, "utf-8")
    if codec in CYRILLIC:
        others = [c for c in (*CYRILLIC, *LATIN) if c != codec]
    elif codec in LATIN or codec == "iso8859_15":
        head = text[:LABEL_SAMPLE_BYTES]
        non_ascii = len(_ASCII_RUN.sub("", head))
        if non_ascii < 0.3 * (non_ascii + len(_LATIN_LETTER.findall(head))):
            return None  # Western text: a few accented letters among ASCII ones
        others = list(CYRILLIC)
    else:
        return None
    sample = data[:LABEL_SAMPLE_BYTES]
    declared, counted = _evidence(text[:len(sample)])
    best: tuple[float, str] | None = None
    for other in others:
        decoded = _strict(sample, other)
        if decoded is None:
            continue
        total, n = _evidence(decoded)
        gain = total - declared
        if n == counted and gain >= EVIDENCE and gain >= MARGIN * n and (best is None or total > best[0]):
            best = (total, other)
    if best is None:
        return None
    decoded = _strict(data, best[1])
    return Detected(decoded, best[1]) if decoded is not None else None
