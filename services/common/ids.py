"""Identifiers shared by more than one stage."""

from __future__ import annotations

# Mail without a Message-ID gets "<sha256 of the raw mail>" + this suffix (RFC 6761's
# reserved .invalid domain), so a re-read of the same mail is still recognised.
SYNTHETIC_MESSAGE_ID_DOMAIN = "@deskmail.invalid"
