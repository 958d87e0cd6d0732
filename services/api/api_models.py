"""The JSON API's models of the workflow: events, counts, changes, conflicts and
search hits (the ticket and comment models are in ``services.api.rest``).

They only document and check shapes for the OpenAPI document; the values are
made by ``services.api.serialize``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["open", "in_progress", "waiting", "resolved", "closed"]
MARKS = ("Matches in a snippet are marked with U+E000 (start) and U+E001 (end), private-use characters "
         "that mail text cannot bring in; the rest is plain text, not HTML.")


class EventOut(BaseModel):
    id: int
    kind: Literal["status", "assignee", "type", "components", "follow_up"]
    actor: str | None = Field(description="The member who made the change; null: deskmail itself "
                                          "(a customer's reply reopened the ticket, auto-close).")
    old_value: str | None = Field(description="Before: a status, an assignee ('' unassigned), a type, "
                                              "components joined by ', '.")
    new_value: str | None = Field(description="After, as old_value; for follow_up the other ticket's key.")
    reason: str | None
    created_at: datetime


class CountOut(BaseModel):
    n: int
    exact: bool = Field(description="False: at least n (counting stopped at 10,000).")


class TicketPatch(BaseModel):
    """A change of a ticket's workflow fields; omitted (or null) fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None
    assignee: str | None = Field(
        None, description="A member's address who may use the ticket's queue (admins: any queue); "
                          "'me' for the acting agent; '' to unassign.")
    type: str | None = Field(None, description="The ticket's type (it cannot be removed).")
    components: list[str] | None = Field(None, description="The whole new list ([] removes them all).")
    version: int = Field(description="The ticket version the change is based on (from GET); "
                                     "another version answers 409 and changes nothing.")
    actor: str | None = Field(
        None, description="The changing member's email; required unless the agent is identified "
                          "(API token, api.user_header, a session).")


class TicketChangedOut(BaseModel):
    key: str
    queue: str
    version: int
    status: str
    assignee: str | None
    type: str | None
    components: list[str]
    events: list[EventOut] = Field(description="The events this change recorded (none when nothing differed).")


class ConflictOut(BaseModel):
    detail: str
    version: int = Field(description="The ticket's version now.")
    events: list[EventOut] = Field(description="The changes made since the version that was sent, oldest first.")
