"""The rules of routing rules that the config, the router and the ticketer share.

A queue's routing rules (``queues[].rules`` in deskmail.yaml, applied by
``services/router/rules.py``) refine the ticket a mail opens: type, components,
assignee, priority, tags, another queue; or they drop the mail. A dropped mail
is a rejection whose reason code is the rule's name, so a name must be a
reason code: no ":" (the code is the reason up to its first ":"), at most
``MAX_RULE_NAME`` characters, letters, digits, "_", "-" and ".", and none of
the codes deskmail itself uses.

Pure: strings in, strings out.
"""

from __future__ import annotations

import re

from services.common import suspended

PRIORITIES = ("low", "normal", "high", "urgent")
MAX_RULE_NAME = 64  # the rejections.reason_code column
MAX_TAG = 64
MAX_TAGS = 50
MAX_COMPONENTS = 50
MAX_RULES = 200  # per queue; also the most rule names a command may carry
_RULE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_RULE_NAME - 1}}}")
RULE_NAME_RULE = (f"a rule name is 1 to {MAX_RULE_NAME} letters, digits, '_', '-' or '.', "
                  "starting with a letter or a digit")
# Codes deskmail gives its own refusals and the suspended list's other entries.
RESERVED_NAMES = frozenset((*suspended.REASON_CODES, suspended.DEAD_LETTER, suspended.UNKNOWN_REASON))


def is_rule_name(name: str) -> bool:
    return _RULE_NAME.fullmatch(name) is not None


def reserved(name: str) -> bool:
    """A name deskmail uses as a reason code of its own (``loop``, ``bounce`` ...)."""
    return name.lower() in RESERVED_NAMES


def dropped_reason(rule: str, queue: str) -> str:
    """The reason of a mail rule ``rule`` of ``queue`` dropped; its code is the rule's name."""
    return f"{rule}: dropped by routing rule {rule} of queue {queue}"


def assigned_reason(rule: str) -> str:
    """The reason of the ticket event that records a rule's assignee."""
    return f"rule {rule}"
