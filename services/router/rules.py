"""Routing rules: the ordered rules of a mail's queue, after the address's defaults.

Pure: a queue's rules (compiled once by the config loader) and what a mail shows
(``Facts``) in, an ``Outcome`` out. The rules of the queue the mail's address
belongs to are tried in order; every rule whose conditions all hold applies:

- ``type``, ``assignee``, ``priority`` and ``queue``: a later rule overrides an
  earlier one; ``components`` (after the address's) and ``tags`` accumulate, each
  once, in order;
- ``stop`` ends the list after a rule that matched; a ``drop`` ends it too, and
  the mail is suspended with the rule's name as its reason code. A mail an admin
  released skips the drop (it was released on purpose), not the rule's other
  actions;
- after a move to another queue that queue's rules are not tried (no chains,
  no loops). The assignee is kept only when they may see the queue the ticket
  opens in (the config checks each rule's own target; rules that combine could
  still move a ticket away from its assignee's queues).

What is matched is attacker-controlled text, bounded before any regex sees it:
the subject (at most 255 characters, as parsed), the first ``MAX_BODY_CHARS``
characters of the text (a reply's new text only, not the quote it carries), the
first ``MAX_HEADER_VALUES`` values of a header with ``MAX_HEADER_CHARS`` each,
and addresses. Addresses are matched on the address alone: a display name is
whatever the sender wants it to be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from services.common.config import Config, HeaderMatch, Queue, Rule, RuleMatch, TextMatch
from services.common.permissions import may_see
from services.router.mailparse import ParsedMail, header_values

MAX_BODY_CHARS = 100_000
MAX_HEADER_CHARS = 10_000
MAX_HEADER_VALUES = 100


class Facts:
    """What the rules look at in one mail, bounded; each text is casefolded at most once."""

    def __init__(self, *, sender: str, to: Sequence[str] = (), cc: Sequence[str] = (), subject: str = "",
                 body: str = "", authenticated: bool = False,
                 headers: Callable[[str], Sequence[str]] = lambda name: ()) -> None:
        self.sender = sender
        self.to = tuple(to)
        self.cc = tuple(cc)
        self.subject = subject
        self.body = body[:MAX_BODY_CHARS]
        self.authenticated = authenticated
        self._headers = headers
        self._folded: dict[str, str] = {}
        self._header_cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def of(cls, mail: ParsedMail, body: str, *, authenticated: bool) -> Facts:
        """``body``: the text the rules see (the router passes a reply's new text)."""
        return cls(sender=mail.from_addr.email, to=[a.email for a in mail.to], cc=[a.email for a in mail.cc],
                   subject=mail.subject, body=body, authenticated=authenticated,
                   headers=lambda name: header_values(mail, name))

    def folded(self, field: str, text: str) -> str:
        if field not in self._folded:
            self._folded[field] = text.casefold()
        return self._folded[field]

    def header(self, name: str) -> tuple[str, ...]:
        if name not in self._header_cache:
            values = self._headers(name)[:MAX_HEADER_VALUES]
            self._header_cache[name] = tuple(v[:MAX_HEADER_CHARS] for v in values)
        return self._header_cache[name]


@dataclass(frozen=True)
class Outcome:
    """What the rules decided; ``matched`` names every rule that matched, in order."""

    matched: tuple[str, ...] = ()
    dropped_by: str | None = None  # the rule that dropped the mail
    ticket_type: str | None = None
    components: tuple[str, ...] = ()
    assignee: str | None = None
    assignee_rule: str | None = None  # the rule that set the assignee
    priority: str | None = None
    tags: tuple[str, ...] = ()
    queue: str | None = None  # the queue the ticket opens in, when a rule moved it


def apply_rules(config: Config, queue: Queue, facts: Facts, *, released: bool, ticket_type: str | None,
                components: Sequence[str]) -> Outcome:
    """The outcome of ``queue``'s rules for one mail, starting from the address's
    ``ticket_type`` and ``components``."""
    outcome = evaluate(queue.rules, facts, released=released, ticket_type=ticket_type, components=components)
    if outcome.queue == queue.key:  # a later rule kept it where it was
        outcome = replace(outcome, queue=None)
    if outcome.assignee is not None:
        member = config.member(outcome.assignee)
        target = config.queue(outcome.queue or queue.key)
        if member is None or target is None or not may_see(config, member, target):
            outcome = replace(outcome, assignee=None, assignee_rule=None)
    return outcome


def evaluate(rules: Sequence[Rule], facts: Facts, *, released: bool = False, ticket_type: str | None = None,
             components: Sequence[str] = ()) -> Outcome:
    matched: list[str] = []
    dropped_by = assignee = assignee_rule = priority = queue = None
    found_components = dict.fromkeys(components)
    tags: dict[str, None] = {}
    for rule in rules:
        if not matches(rule.match, facts):
            continue
        matched.append(rule.name)
        if rule.drop and not released:
            dropped_by = rule.name
            break
        actions = rule.actions
        ticket_type = actions.type if actions.type is not None else ticket_type
        if actions.assignee is not None:
            assignee, assignee_rule = actions.assignee, rule.name
        priority = actions.priority if actions.priority is not None else priority
        queue = actions.queue if actions.queue is not None else queue
        found_components.update(dict.fromkeys(actions.components))
        tags.update(dict.fromkeys(actions.tags))
        if rule.stop:
            break
    return Outcome(matched=tuple(matched), dropped_by=dropped_by, ticket_type=ticket_type,
                   components=tuple(found_components), assignee=assignee, assignee_rule=assignee_rule,
                   priority=priority, tags=tuple(tags), queue=queue)


def matches(match: RuleMatch, facts: Facts) -> bool:
    """Every condition given holds. Cheap conditions first, the body last."""
    if match.authenticated is not None and match.authenticated != facts.authenticated:
        return False
    if match.sender is not None and not _holds(match.sender, facts.sender):
        return False
    for condition, addresses in ((match.to, facts.to), (match.cc, facts.cc)):
        if condition is not None and not any(_holds(condition, a) for a in addresses):
            return False
    if match.subject is not None and not _holds(match.subject, facts.subject,
                                                lambda: facts.folded("subject", facts.subject)):
        return False
    if match.header is not None and not _header(match.header, facts):
        return False
    if match.body is not None and not _holds(match.body, facts.body, lambda: facts.folded("body", facts.body)):
        return False
    return True


def _header(match: HeaderMatch, facts: Facts) -> bool:
    values = facts.header(match.name)
    if match.value is None:
        return bool(values)
    return any(_holds(match.value, v) for v in values)


def _holds(match: TextMatch, value: str, folded: Callable[[], str] | None = None) -> bool:
    """``folded`` gives ``value`` casefolded (once per mail for the long texts)."""
    if match.regex is not None:
        return match.regex.search(value) is not None
    assert match.text is not None
    return match.text in (folded() if folded is not None else value.casefold())
