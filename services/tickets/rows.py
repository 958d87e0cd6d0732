"""Rows to result types and back, for the queries and the outgoing-mail writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from services.tickets.views import Recipient, ThreadEntry

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T", bound="DataclassInstance")


def build(cls: type[_T], row: Any, **overrides: Any) -> _T:
    """A result dataclass from the row's same-named columns, plus ``overrides``."""
    mapping = row._mapping
    values = {f.name: mapping[f.name] for f in fields(cls) if f.name not in overrides}
    return cls(**values, **overrides)


def thread_entry(row: Any) -> ThreadEntry:
    """A ThreadEntry from a comments row (or the same-named values of a new one)."""
    mapping = row if isinstance(row, Mapping) else row._mapping
    # A new agent comment's values hold no incoming-mail fields: those keep their defaults.
    values = {f.name: mapping[f.name] for f in fields(ThreadEntry) if f.name not in ("to", "cc") and f.name in mapping}
    values["internal"] = bool(values["internal"])
    if "automatic" in values:
        values["automatic"] = bool(values["automatic"])
    if values["author_verified"] is not None:
        values["author_verified"] = bool(values["author_verified"])
    return ThreadEntry(**values, to=recipients(mapping["to_addrs"]), cc=recipients(mapping["cc_addrs"]))


def recipient_json(r: Recipient) -> dict[str, Any]:
    """A recipient as stored in ``comments.to_addrs`` / ``cc_addrs``."""
    return {"email": r.email, "name": r.name, "member": r.member}


def recipients(value: Any) -> tuple[Recipient, ...]:
    return tuple(
        Recipient(str(r["email"]), r.get("name"), bool(r.get("member"))) for r in value or ()
    )


class _Inserted(Protocol):
    @property
    def inserted_primary_key(self) -> Any: ...


def inserted_id(result: _Inserted) -> int:
    """The new row's id, from Core's result or the executor's (services/tickets/driver.py)."""
    key = result.inserted_primary_key
    assert key is not None, "INSERT did not report its primary key"
    return int(key[0])
