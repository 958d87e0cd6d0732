"""Header and body decoding: charsets, RFC 2047 encoded-words, raw 8-bit bytes, base64 salvage.

Everything here is lenient and never raises on bad input: what cannot be
decoded exactly is decoded as well as it can be, and callers note defects.
"""

from __future__ import annotations

import binascii
import codecs
import re
from email.message import Message
from functools import lru_cache

from services.router.mailparse import charsets
from services.router.mailparse.model import Address, ParsedMail

# Charset labels Python does not know, and labels whose senders really use a
# superset (the same choices the WHATWG Encoding Standard makes for browsers).
_CHARSET_LABELS = {
    "unknown-8bit": "",
    "x-unknown": "",
    "x-user-defined": "",
    "iso-8859-8-i": "iso8859-8",
    "windows-874": "cp874",
    "x-mac-cyrillic": "mac-cyrillic",
}
_CODEC_SUPERSETS = {
    "iso8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "big5": "big5hkscs",
}
_FOLD = re.compile(r"\r?\n(?=[ \t])|\r?\n$")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FILENAME_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


@lru_cache(maxsize=512)
def _codec(charset: str | None) -> str | None:
    """Python codec name for a MIME charset label; None when there is none or it is unknown."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower()
    label = _CHARSET_LABELS.get(label, label)
    if not label:
        return None
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    return _CODEC_SUPERSETS.get(name, name)


def _strict(data: bytes, codec: str) -> str | None:
    """``data`` decoded with ``codec``, or None when its bytes are not valid in it.

    A multi-byte character cut off at the very end (a truncated mail, an
    encoded-word split badly) is dropped rather than failing the charset, when
    the rest shows that the text really is multi-byte (a lone high byte after
    ASCII is more likely a single-byte charset).
    """
    try:
        return data.decode(codec)
    except UnicodeError:
        pass
    except LookupError:  # a bytes-to-bytes codec such as "hex"
        return None
    try:
        text = codecs.getincrementaldecoder(codec)().decode(data, final=False)
    except UnicodeError:
        return None
    return None if text.isascii() else text


def _decode(data: bytes, *charsets: str | None) -> tuple[str, str]:
    """Decode with the first charset that fits, else cp1252 with replacement
    characters. Returns the text and the codec used. Never raises."""
    for charset in charsets:
        codec = _codec(charset)
        if codec is None:
            continue
        text = _strict(data, codec)
        if text is not None:
            return text, codec
    return data.decode("cp1252", "replace"), "cp1252"


def body_text(data: bytes, charset: str | None, defects: list[str]) -> tuple[str, str | None]:
    """A text part's text, and the codec it was decoded with when that is not
    its declared charset (detected: none declared, an unknown one, one its
    bytes are not valid in, or a Cyrillic code page that reads as another)."""
    text, detected = decode_detected(data, charset)
    declared = _codec(charset)
    if detected is not None:
        if not charset:
            if detected != "utf-8":  # 8-bit UTF-8 without a label is today's norm (RFC 6532), not a defect
                defects.append(f"8-bit text without a charset; decoded as {detected}")
        elif declared is None:
            defects.append(f"unknown charset {charset!r}; decoded as {detected}")
        elif _strict(data, declared) is not None:
            defects.append(f"text labelled {charset} reads as {detected}; decoded as {detected}")
        else:
            defects.append(f"text is not valid {charset}; decoded as {detected}")
    elif charset is None and not data.isascii() and text and "\ufffd" in text:
        defects.append("8-bit text in no known charset; decoded with replacement characters")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text, detected


def decode_detected(data: bytes, charset: str | None) -> tuple[str, str | None]:
    """``data`` decoded as ``charset`` when its bytes are valid in it and do
    not read far better in another Cyrillic code page; else as detected
    (services.router.mailparse.charsets). Returns the text and the detected
    codec, None when the declared one was used (or there was nothing to
    detect: plain ASCII). Never raises."""
    declared = _codec(charset)
    text = _strict(data, declared) if declared is not None else None
    if text is not None and declared is not None:
        if text.isascii():
            return text, None
        fix = charsets.mislabelled(text, data, declared)
        return (fix.text, fix.codec) if fix is not None else (text, None)
    if data.isascii():
        return data.decode("ascii"), None
    found = charsets.detect(data, exclude=declared)
    if found is not None:
        return found.text, found.codec
    return data.decode("cp1252", "replace"), None


def unfold(value: str) -> str:
    return _FOLD.sub("", value) if "\n" in value else value


def decode_8bit(value: str, hint: str | None) -> str:
    """Decode raw 8-bit header bytes (surrogate-escaped by the parser): UTF-8,
    else ``hint`` (the body's charset), else as detected."""
    if value.isascii():
        return value
    try:
        raw = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return value  # already text, e.g. a decoded RFC 2231 parameter
    for codec in ("utf_8", _codec(hint)):
        text = _strict(raw, codec) if codec is not None else None
        if text is not None:
            return text
    return decode_detected(raw, None)[0]


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words, also where senders misplace them (inside quotes, mid-word).

    Adjacent words in one charset are joined before decoding, since senders split
    multi-byte characters across words. Unknown charsets fall back like bodies do.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[position:match.start()]
        # Whitespace between two encoded-words is not part of the text (RFC 2047 6.2).
        if gap and not (position and gap.isspace()):
            _flush(out, pending, pending_charset)
            out.append(gap)
        charset = match.group(1).split("*", 1)[0]
        if charset.lower() != pending_charset.lower():
            _flush(out, pending, pending_charset)
            pending_charset = charset
        if match.group(2) in "bB":
            pending += _lenient_base64(match.group(3).encode("ascii", "ignore"))
        else:
            pending += binascii.a2b_qp(match.group(3).encode("utf-8", "surrogateescape"), header=True)
        position = match.end()
    _flush(out, pending, pending_charset)
    out.append(value[position:])
    return "".join(out)


def _flush(out: list[str], pending: bytearray, charset: str) -> None:
    if pending:
        out.append(decode_detected(bytes(pending), charset)[0])
        pending.clear()


def header_values(mail: ParsedMail, name: str) -> tuple[str, ...]:
    """Every value of header ``name`` (any case), top-down, decoded as the parser
    decodes the headers it reads: unfolded, raw 8-bit bytes and encoded-words
    decoded, control characters dropped."""
    wanted = name.lower()
    return tuple(clean(decode_words(decode_8bit(unfold(value), mail.header_charset)))
                 for field, value in mail.header_fields if field == wanted)


def clean(text: str) -> str:
    """Drop control characters (NUL breaks PostgreSQL text columns)."""
    return _CONTROL.sub("", text)


def _lenient_base64(data: bytes) -> bytes:
    """Decode base64 whatever the junk or padding; an incomplete last quantum is fixed."""
    data = _BASE64_JUNK.sub(b"", data)
    remainder = len(data) % 4
    if remainder == 1:
        data = data[:-1]
    elif remainder:
        data += b"=" * (4 - remainder)
    return binascii.a2b_base64(data)


def salvage_base64(data: bytes) -> bytes:
    """Decode the leading run of base64 lines; a footer or garbage may follow them.

    A line with a space or more than two stray characters ends the run. When
    even the first line is like that, all base64 characters in the data are used.
    """
    lines: list[bytes] = []
    for line in data.splitlines():
        line = line.strip()
        if not line:
            if lines:
                break
            continue
        if b" " in line or b"\t" in line or len(_BASE64_JUNK.findall(line.rstrip(b"="))) > 2:
            break
        lines.append(line)
    return _lenient_base64(b"".join(lines) if lines else data)


def unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def to_addresses(pairs: list[tuple[str, str]]) -> list[Address]:
    found: list[Address] = []
    seen: set[str] = set()
    for name, address in pairs:
        address = clean(address).strip().lower()
        if not address or address in seen:
            continue
        seen.add(address)
        display = " ".join(clean(decode_words(name)).split()).strip("\"' ") or None
        if display is not None and display.lower() == address:
            display = None
        found.append(Address(address, display))
    return found


def header_param(part: Message, name: str, header: str = "content-type", hint: str | None = None) -> str | None:
    """A decoded header parameter (RFC 2231, RFC 2047 or raw 8-bit), or None.

    Does its own RFC 2231 charset decoding: the stdlib's raises on raw 8-bit bytes.
    """
    value = part.get_param(name, header=header)
    if isinstance(value, tuple):
        charset, _language, text = value
        try:
            raw = text.encode("latin-1", "surrogateescape")  # %XX escapes were decoded as latin-1
        except UnicodeEncodeError:
            return text
        return _decode(raw, charset, "utf-8")[0]
    if isinstance(value, str):
        return decode_words(decode_8bit(unfold(value), hint))
    return None


def part_filename(part: Message, hint: str | None) -> str | None:
    """The decoded file name, without directories, from Content-Disposition or Content-Type."""
    headers = (part.get("content-disposition") or "") + (part.get("content-type") or "")
    if "name" not in headers.lower():
        return None  # the common case, without parsing parameters
    name = header_param(part, "filename", "content-disposition", hint)
    if name is None:
        name = header_param(part, "name", "content-type", hint)
    if name is None:
        return None
    name = _FILENAME_UNSAFE.sub("", name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return None if name in ("", ".", "..") else name
