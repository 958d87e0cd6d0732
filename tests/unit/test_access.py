"""Who may open tickets by mail where (pure decision)."""

from __future__ import annotations

import textwrap

import pytest

from services.common.config import parse_text
from services.router.access import decide

CONFIG = parse_text(textwrap.dedent("""\
    organization:
      members:
        - {email: alice@example.com, groups: [support]}
        - {email: bob@example.com}
        - {email: carl@example.com, groups: [sales]}
    queues:
      - key: SUPPORT
        access: [group:support, bob@example.com]
        mailboxes:
          - {address: support@example.com, ingress: true, accept_external: true}
          - {address: internal@example.com, ingress: true, accept_external: false}
      - key: OPEN
        mailboxes:
          - {address: open@example.com, ingress: true}
    """))


@pytest.mark.parametrize(
    ("mailbox", "sender", "allowed", "member", "reason"),
    [
        ("support@example.com", "alice@example.com", True, True, None),       # by group
        ("support@example.com", "BOB@example.com", True, True, None),         # by address, any case
        ("support@example.com", "carl@example.com", False, True, "no_queue_access"),  # member without access
        ("support@example.com", "eve@customer.test", True, False, None),      # outsider, external accepted
        ("internal@example.com", "eve@customer.test", False, False, "external_not_accepted"),
        ("internal@example.com", "alice@example.com", True, True, None),
        ("internal@example.com", "carl@example.com", False, True, "no_queue_access"),
        ("open@example.com", "carl@example.com", True, True, None),           # empty access: every member
        ("open@example.com", "eve@customer.test", False, False, "external_not_accepted"),
    ],
)
def test_decide(mailbox, sender, allowed, member, reason):
    decision = decide(CONFIG, CONFIG.mailbox(mailbox), sender.lower(), authenticated=True)
    assert (decision.allowed, decision.member, decision.reason) == (allowed, member, reason)
    if not allowed:
        assert sender.lower() in decision.detail


def test_agents_see_the_queues_their_access_lists_admit_and_admins_see_all() -> None:
    from services.common.config import parse_text
    from services.common.permissions import is_admin, may_manage, may_see, visible_queues

    cfg = parse_text(
        "organization:\n"
        "  members:\n"
        "    - {email: alice@example.com, groups: [support]}\n"
        "    - {email: bob@example.com}\n"
        "    - {email: root@example.com, groups: [ops]}\n"
        "  admins: [group:ops]\n"
        "queues:\n"
        "  - {key: SUPPORT, access: [group:support]}\n"
        "  - {key: SALES, access: [bob@example.com]}\n"
        "  - {key: ALL}\n"
    )
    alice, bob, root = (cfg.member(e) for e in ("alice@example.com", "bob@example.com", "root@example.com"))
    assert alice and bob and root
    assert [q.key for q in visible_queues(cfg, alice)] == ["SUPPORT", "ALL"]
    assert [q.key for q in visible_queues(cfg, bob)] == ["SALES", "ALL"]
    assert [q.key for q in visible_queues(cfg, root)] == ["SUPPORT", "SALES", "ALL"]
    sales = cfg.queue("SALES")
    assert sales is not None and not may_see(cfg, alice, sales)
    assert is_admin(cfg, root) and may_manage(cfg, root) and not may_manage(cfg, alice)


@pytest.mark.parametrize(
    ("mailbox", "sender", "allowed", "member", "reason"),
    [
        ("internal@example.com", "alice@example.com", False, False, "sender_not_authenticated"),
        ("support@example.com", "alice@example.com", True, False, None),  # an outsider's mail, external accepted
        ("support@example.com", "carl@example.com", True, False, None),   # not a member, so no access check
        ("internal@example.com", "eve@customer.test", False, False, "external_not_accepted"),
    ],
)
def test_a_member_address_without_proof_is_an_outsider(mailbox, sender, allowed, member, reason):
    decision = decide(CONFIG, CONFIG.mailbox(mailbox), sender, authenticated=False)
    assert (decision.allowed, decision.member, decision.reason) == (allowed, member, reason)
