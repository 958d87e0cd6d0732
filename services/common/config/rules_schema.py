"""``queues[].rules`` as written: the pydantic models of routing rules.

Each model checks what one rule can check on its own: a condition is a string
(case-insensitive substring) or ``{regex: ...}`` (compiled here, so a bad one is
reported at its line), a rule has at least one condition, names and values fit
where they end up. What spans rules and sections (names unique in the queue, the
target queue configured, the assignee a member who may see that queue) is
checked by the loader, which also freezes these into ``model.Rule``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from services.common import mailrules, routing
from services.common.config.base import Section

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# RFC 5322 field names: printable ASCII except ":" and space.
_FIELD_NAME = re.compile(r"[!-9;-~]{1,100}")
MAX_PATTERN_CHARS = 1000
MAX_TYPE_CHARS = 64  # tickets.type
MAX_COMPONENT_CHARS = 255

Priority = Literal["low", "normal", "high", "urgent"]
assert routing.PRIORITIES == ("low", "normal", "high", "urgent"), "keep Priority in step"


def _one_line(what: str, value: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} is empty")
    if len(value) > limit:
        raise ValueError(f"{what} has {len(value)} characters; at most {limit}")
    mailrules.check_header_text(what, value)
    return value


class TextCondition(Section):
    """A string (a case-insensitive substring) or ``{regex: ...}`` (case-insensitive ``re.search``)."""

    text: str | None = None
    regex: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            if not data:
                raise ValueError("an empty string would match every mail")
            return {"text": data}
        if not isinstance(data, dict):
            raise ValueError('a condition is a string or {regex: "..."}')
        return data

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("an empty string would match every mail")
        return v

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) > MAX_PATTERN_CHARS:
            raise ValueError(f"the regex has {len(v)} characters; at most {MAX_PATTERN_CHARS}")
        try:
            re.compile(v, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> "TextCondition":
        if (self.text is None) == (self.regex is None):
            raise ValueError('a condition is a string or {regex: "..."}')
        return self


class HeaderCondition(Section):
    """Any header by name; without ``value`` the header only has to be there."""

    name: str
    value: TextCondition | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _FIELD_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a header name")
        return v.lower()


class MatchModel(Section):
    """Every condition given must hold; at least one is given."""

    from_: TextCondition | None = Field(None, alias="from")
    to: TextCondition | None = None
    cc: TextCondition | None = None
    subject: TextCondition | None = None
    header: HeaderCondition | None = None
    body: TextCondition | None = None
    authenticated: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> "MatchModel":
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a rule needs at least one condition: from, to, cc, subject, header, body, authenticated")
        return self


class SetModel(Section):
    """What a matching rule sets on the ticket the mail opens."""

    type: str | None = None
    components: tuple[str, ...] = ()
    assignee: str | None = None
    priority: Priority | None = None
    tags: tuple[str, ...] = ()
    queue: str | None = None

    @field_validator("type")
    @classmethod
    def _type(cls, v: str | None) -> str | None:
        return None if v is None else _one_line("the type", v, MAX_TYPE_CHARS)

    @field_validator("components")
    @classmethod
    def _components(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > routing.MAX_COMPONENTS:
            raise ValueError(f"at most {routing.MAX_COMPONENTS} components")
        return tuple(dict.fromkeys(_one_line("a component", c, MAX_COMPONENT_CHARS) for c in v))

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > routing.MAX_TAGS:
            raise ValueError(f"at most {routing.MAX_TAGS} tags")
        return tuple(dict.fromkeys(_one_line("a tag", t, routing.MAX_TAG) for t in v))

    @field_validator("assignee")
    @classmethod
    def _assignee(cls, v: str | None) -> str | None:
        if v is not None and not _EMAIL.match(v):
            raise ValueError(f"{v!r} is not an email address")
        return None if v is None else v.lower()

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        if v is not None and not mailrules.is_queue_key(v):
            raise ValueError(mailrules.QUEUE_KEY_RULE)
        return v


class RuleModel(Section):
    name: str
    match: MatchModel
    set_: SetModel = Field(SetModel(), alias="set")
    drop: bool = False  # the mail is suspended with reason code = name
    stop: bool = False  # no later rule is tried when this one matched

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not routing.is_rule_name(v):
            raise ValueError(routing.RULE_NAME_RULE)
        if routing.reserved(v):
            raise ValueError(f"{v!r} is a reason code deskmail uses itself; name the rule otherwise")
        return v
