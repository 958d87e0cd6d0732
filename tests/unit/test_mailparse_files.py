"""Attachments as agents need them: winmail.dat (TNEF) unpacked into its files, invitations as .ics."""

from __future__ import annotations

import base64
import struct

from services.router.mailparse import parse

_SIGNATURE = 0x223E9F78
_MESSAGE, _ATTACHMENT = 1, 2
_BODY, _REND, _TITLE, _DATA = 0x800C, 0x9002, 0x8010, 0x800F


def _object(level: int, name: int, data: bytes, kind: int = 0x0006) -> bytes:
    return struct.pack("<BHHI", level, name, kind, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def tnef(files: list[tuple[bytes, bytes]], body: bytes | None = None) -> bytes:
    out = struct.pack("<IH", _SIGNATURE, 1)
    if body is not None:
        out += _object(_MESSAGE, _BODY, body)
    for name, data in files:
        out += _object(_ATTACHMENT, _REND, b"\x01\x00" + b"\x00" * 12)
        out += _object(_ATTACHMENT, _TITLE, name + b"\x00")
        out += _object(_ATTACHMENT, _DATA, data)
    return out


def mail(winmail: bytes, text: str | None = "See the attached report.") -> bytes:
    parts = [b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode() + b"\r\n"] if text else []
    parts.append(b"--b\r\nContent-Type: application/ms-tnef; name=\"winmail.dat\"\r\n"
                 b"Content-Disposition: attachment; filename=\"winmail.dat\"\r\n"
                 b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(winmail))
    return (b"From: ann@customer.test\r\nTo: support@example.com\r\nSubject: Report\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(parts) + b"--b--\r\n")


def test_winmail_dat_becomes_its_files() -> None:
    parsed = parse(mail(tnef([(b"report.pdf", b"%PDF-1.4 report"), (b"photo.jpg", b"\xff\xd8\xff photo")])))
    assert [(a.filename, a.content_type, a.payload) for a in parsed.attachments] == [
        ("report.pdf", "application/pdf", b"%PDF-1.4 report"), ("photo.jpg", "image/jpeg", b"\xff\xd8\xff photo")]
    assert parsed.text == "See the attached report."


def test_office_files_inside_get_their_types() -> None:
    parsed = parse(mail(tnef([(b"report.xlsx", b"PK xlsx"), (b"letter.docx", b"PK docx"), (b"mail.msg", b"msg")])))
    assert [a.content_type for a in parsed.attachments] == [
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "application/vnd.ms-outlook"]


def test_the_tnef_body_is_the_text_of_a_mail_without_one() -> None:
    parsed = parse(mail(tnef([(b"a.txt", b"a line of text")], body=b"The body Outlook put inside."), text=None))
    assert parsed.text == "The body Outlook put inside."
    assert [a.filename for a in parsed.attachments] == ["a.txt"]


def test_a_broken_winmail_dat_is_kept_as_it_is() -> None:
    parsed = parse(mail(b"not TNEF at all"))
    assert [a.filename for a in parsed.attachments] == ["winmail.dat"]
    assert any("winmail.dat (TNEF) could not be unpacked" in d for d in parsed.defects)
    truncated = parse(mail(tnef([(b"report.pdf", b"%PDF-1.4 report")])[:30]))
    assert [a.filename for a in truncated.attachments] == ["winmail.dat"]  # nothing whole inside


def test_file_names_inside_are_made_safe() -> None:
    parsed = parse(mail(tnef([(b"..\\..\\evil\x07.exe", b"MZ")])))
    assert [a.filename for a in parsed.attachments] == ["evil.exe"]


def test_a_calendar_invitation_is_kept_as_an_ics_file() -> None:
    raw = (b"From: a@customer.test\r\nTo: support@example.com\r\nSubject: Meet\r\n"
           b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
           b"Let us meet.\r\n--b\r\nContent-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n"
           b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n--b--\r\n")
    parsed = parse(raw)
    assert parsed.text == "Let us meet."
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [("invite.ics", "text/calendar")]
