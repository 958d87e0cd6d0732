"""Reading deskmail.yaml: YAML with line numbers, validation, the frozen result.

``load(path)`` parses and validates the file once (``schema``), checks the rules
that span sections, applies defaults, resolves secret references and returns a
frozen ``model.Config``. Every error is a ``Problem`` naming the line it was found
on (pydantic's error locations are mapped back to the YAML nodes); all of them
are raised together as one ``ConfigError``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from services.common.config.limits import MailLimits
from services.common.config.model import (
    Config,
    HeaderMatch,
    Imap,
    IngressLogin,
    Mailbox,
    Queue,
    Rule,
    RuleActions,
    RuleMatch,
    S3Blobs,
    Smtp,
    TextMatch,
)
from services.common.config.rules_schema import RuleModel, TextCondition
from services.common.config.schema import TOPIC_NAMES, ConfigModel, FetcherSettings, LeaseSettings
from services.common.config.secrets import MIN_KEY_CHARS, Secret, SecretRef, SecretUnavailable, resolve


@dataclass(frozen=True)
class Problem:
    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        place = f"line {self.line}" if self.line else "file"
        return f"{place}: {self.where}: {self.message}" if self.where else f"{place}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists each error with its line."""

    def __init__(self, path: str, problems: list[Problem]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(str(p) for p in problems))


# ---------------------------------------------------------------- loading


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and sequence item."""


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _lines(value_node, path + (key,), out)
            out[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, path + (index,), out)


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _where(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def parse_text(text: str, path: str = "<config>") -> Config:
    """Validate YAML text into a Config; raises ConfigError naming each bad line."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(path, [Problem(line, "", f"not valid YAML: {getattr(exc, 'problem', exc)}")])
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(path, [Problem(1, "", "the file must be a mapping of sections")])
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            message = err["msg"].removeprefix("Value error, ")
            problems.append(Problem(_line_for(loc, lines), _where(loc), message))
        raise ConfigError(path, problems) from None
    return _freeze(model, path, lines)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate deskmail.yaml; raises ConfigError (with line numbers)."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_text(text, str(path))


def _resolve(ref: SecretRef, loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int], problems: list[Problem]) -> Secret:
    """The secret, or a placeholder and a Problem: every unresolvable secret is reported at once."""
    try:
        return resolve(ref)
    except SecretUnavailable as exc:
        problems.append(Problem(_line_for(loc, lines), _where(loc), str(exc)))
        return Secret("", f"env:{ref.env}" if ref.env is not None else f"file:{ref.file}")


_DEFAULT_IMAP_PORTS = {"ssl": 993, "starttls": 143, "none": 143}
_DEFAULT_SMTP_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


def _freeze(model: ConfigModel, path: str, lines: dict[tuple[Any, ...], int]) -> Config:
    problems: list[Problem] = []
    base = Path(path).resolve().parent if path != "<config>" else Path.cwd()
    data_dir = Path(model.data_dir) if model.data_dir else base / "deskmail-data"
    if not data_dir.is_absolute():
        data_dir = base / data_dir

    seen_addresses: dict[str, tuple[Any, ...]] = {}
    seen_queues: set[str] = set()
    groups = {g for m in model.organization.members for g in m.groups}
    member_emails = {m.email for m in model.organization.members}
    queues: list[Queue] = []
    for qi, q in enumerate(model.queues):
        qloc: tuple[Any, ...] = ("queues", qi)
        if q.key in seen_queues:
            problems.append(Problem(_line_for(qloc + ("key",), lines), _where(qloc + ("key",)), f"queue key {q.key} is used twice"))
        seen_queues.add(q.key)
        for ai, entry in enumerate(q.access):
            aloc = qloc + ("access", ai)
            if entry.startswith("group:"):
                if entry[6:] not in groups:
                    problems.append(Problem(_line_for(aloc, lines), _where(aloc), f"no member is in group {entry[6:]!r}"))
            elif entry not in ("everyone", "members") and entry.lower() not in member_emails:
                problems.append(Problem(_line_for(aloc, lines), _where(aloc),
                                        f"{entry!r} is not an organization member, a group:NAME, 'members' or 'everyone'"))
        mailboxes: list[Mailbox] = []
        for mi, m in enumerate(q.mailboxes):
            mloc = qloc + ("mailboxes", mi)
            if m.address in seen_addresses:
                problems.append(Problem(_line_for(mloc + ("address",), lines), _where(mloc + ("address",)),
                                        f"address {m.address} is configured twice"))
            seen_addresses[m.address] = mloc
            imap = None
            if m.imap is not None:
                imap = Imap(
                    host=m.imap.host,
                    port=m.imap.port or _DEFAULT_IMAP_PORTS[m.imap.security],
                    security=m.imap.security,
                    login=m.imap.login or m.address,
                    password=_resolve(m.imap.password, mloc + ("imap", "password"), lines, problems),
                    folder=m.imap.folder or model.fetcher.folder,
                    cafile=m.imap.cafile,
                    verify_tls=m.imap.verify_tls,
                )
            smtp = None
            if m.smtp is not None:
                smtp = Smtp(
                    host=m.smtp.host,
                    port=m.smtp.port or _DEFAULT_SMTP_PORTS[m.smtp.security],
                    security=m.smtp.security,
                    login=m.smtp.login,
                    password=(_resolve(m.smtp.password, mloc + ("smtp", "password"), lines, problems)
                              if m.smtp.password else None),
                    address=(m.smtp.address or m.address).lower(),
                    cafile=m.smtp.cafile,
                    verify_tls=m.smtp.verify_tls,
                )
            mailboxes.append(Mailbox(
                address=m.address, queue=q.key, accept_external=m.accept_external,
                ticket_type=m.ticket.type, components=m.ticket.components, imap=imap,
                ingress=m.ingress, smtp=smtp, signatures=m.signatures,
            ))
        queues.append(Queue(key=q.key, name=q.name or q.key, access=q.access,
                            allow_outbound_mail=q.allow_outbound_mail, mailboxes=tuple(mailboxes),
                            closed_reply=q.closed_reply, auto_close_days=q.auto_close_days,
                            limits=MailLimits.of(model.limits, q.limits)))
    assignees: list[tuple[tuple[Any, ...], str, str]] = []  # (where, assignee, target queue): checked below
    for qi, q in enumerate(model.queues):
        rules = _rules(q.key, q.rules, ("queues", qi), seen_queues, member_emails, assignees, lines, problems)
        queues[qi] = replace(queues[qi], rules=rules)

    kafka_settings = model.kafka
    if isinstance(kafka_settings.sasl_username, SecretRef):
        username = _resolve(kafka_settings.sasl_username, ("kafka", "sasl_username"), lines, problems)
        kafka_settings = kafka_settings.model_copy(update={"sasl_username": username.reveal()})
    kafka_password = None
    if model.kafka.sasl_password is not None:
        kafka_password = _resolve(model.kafka.sasl_password, ("kafka", "sasl_password"), lines, problems)
    message_id_key = None
    if model.organization.message_id_key is not None:
        kloc = ("organization", "message_id_key")
        unresolved = len(problems)
        message_id_key = _resolve(model.organization.message_id_key, kloc, lines, problems)
        if len(problems) == unresolved and len(message_id_key.reveal()) < MIN_KEY_CHARS:
            problems.append(Problem(_line_for(kloc, lines), _where(kloc),
                                    f"the key from {message_id_key.source} is shorter than "
                                    f"{MIN_KEY_CHARS} characters"))
    session_secret = None
    if model.api.session_secret is not None:
        session_secret = _resolve(model.api.session_secret, ("api", "session_secret"), lines, problems)
    oidc_secret = None
    if model.api.auth.oidc is not None and model.api.auth.oidc.client_secret is not None:
        oidc_secret = _resolve(model.api.auth.oidc.client_secret, ("api", "auth", "oidc", "client_secret"), lines,
                               problems)
    blob_s3 = _s3_blobs(model, lines, problems)
    ingress_logins = tuple(
        IngressLogin(u.login, _resolve(u.password, ("ingress", "auth", "users", i, "password"), lines, problems))
        for i, u in enumerate(model.ingress.auth.users))
    fetcher = _fetcher(model, lines, problems)
    blob_path = Path(model.blobs.path) if model.blobs.path else data_dir / "blobs"
    if not blob_path.is_absolute():
        blob_path = base / blob_path
    config = Config(
        path=path,
        kafka=kafka_settings,
        kafka_password=kafka_password,
        topics={**TOPIC_NAMES, **{str(k): v for k, v in model.kafka.topics.items()}},
        database_url=model.database.url or f"sqlite:///{data_dir / 'deskmail.db'}",
        data_dir=data_dir,
        blob_path=blob_path,
        blobs=model.blobs,
        ingress=model.ingress,
        fetcher=fetcher,
        sender=model.sender,
        consume=model.consume,
        api=model.api,
        metrics=model.metrics,
        organization=model.organization,
        queues=tuple(queues),
        message_id_key=message_id_key,
        rate_limits=model.rate_limits,
        api_session_secret=session_secret,
        api_oidc_client_secret=oidc_secret,
        suspended=model.suspended,
        ingress_logins=ingress_logins,
        automatic_mail=model.automatic_mail,
        ticketer=model.ticketer,
        blob_s3=blob_s3,
    )
    _check_assignees(config, assignees, lines, problems)
    if problems:
        raise ConfigError(path, problems)
    return config


def _s3_blobs(model: ConfigModel, lines: dict[tuple[Any, ...], int], problems: list[Problem]) -> S3Blobs | None:
    """``blobs.s3`` resolved when it is the backend (the schema refuses it otherwise)."""
    s3 = model.blobs.s3
    if model.blobs.backend != "s3" or s3 is None:
        return None
    loc = ("blobs", "s3")
    return S3Blobs(
        bucket=s3.bucket,
        prefix=s3.prefix,
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        access_key_id=(_resolve(s3.access_key_id, loc + ("access_key_id",), lines, problems)
                       if s3.access_key_id else None),
        secret_access_key=(_resolve(s3.secret_access_key, loc + ("secret_access_key",), lines, problems)
                           if s3.secret_access_key else None),
        addressing_style=s3.addressing_style or ("path" if s3.endpoint_url else "virtual"),
    )


# ---------------------------------------------------------------- routing rules


def _rules(queue: str, models: tuple[RuleModel, ...], qloc: tuple[Any, ...], queue_keys: set[str],
           member_emails: set[str], assignees: list[tuple[tuple[Any, ...], str, str]],
           lines: dict[tuple[Any, ...], int], problems: list[Problem]) -> tuple[Rule, ...]:
    """A queue's rules frozen, with the checks across rules and sections: names
    unique in the queue (in any case), the target queue configured, the assignee
    a member (whether they may see the target queue is checked on the Config)."""
    rules: list[Rule] = []
    names: set[str] = set()
    for ri, r in enumerate(models):
        rloc = qloc + ("rules", ri)
        if r.name.lower() in names:
            problems.append(Problem(_line_for(rloc + ("name",), lines), _where(rloc + ("name",)),
                                    f"rule name {r.name} is used twice in queue {queue}"))
        names.add(r.name.lower())
        actions = r.set_
        if actions.queue is not None and actions.queue not in queue_keys:
            where = rloc + ("set", "queue")
            problems.append(Problem(_line_for(where, lines), _where(where), f"no queue {actions.queue} is configured"))
        if actions.assignee is not None:
            where = rloc + ("set", "assignee")
            if actions.assignee not in member_emails:
                problems.append(Problem(_line_for(where, lines), _where(where),
                                        f"{actions.assignee!r} is not an organization member"))
            else:
                assignees.append((where, actions.assignee, actions.queue or queue))
        m = r.match
        match = RuleMatch(
            sender=_text(m.from_), to=_text(m.to), cc=_text(m.cc), subject=_text(m.subject), body=_text(m.body),
            header=None if m.header is None else HeaderMatch(m.header.name, _text(m.header.value)),
            authenticated=m.authenticated,
        )
        rules.append(Rule(
            name=r.name, match=match, drop=r.drop, stop=r.stop,
            actions=RuleActions(type=actions.type, components=actions.components, assignee=actions.assignee,
                                priority=actions.priority, tags=actions.tags, queue=actions.queue),
        ))
    return tuple(rules)


def _text(condition: TextCondition | None) -> TextMatch | None:
    if condition is None:
        return None
    if condition.regex is not None:  # validated by the schema: compiles
        return TextMatch(regex=re.compile(condition.regex, re.IGNORECASE))
    assert condition.text is not None
    return TextMatch(text=condition.text.casefold())


def _check_assignees(config: Config, assignees: list[tuple[tuple[Any, ...], str, str]],
                     lines: dict[tuple[Any, ...], int], problems: list[Problem]) -> None:
    """A rule's assignee must see the queue the ticket opens in: its access list
    admits them, or they are an admin."""
    from services.common.permissions import may_see  # it imports this package

    for where, email, key in assignees:
        member, target = config.member(email), config.queue(key)
        if member is not None and target is not None and not may_see(config, member, target):
            problems.append(Problem(_line_for(where, lines), _where(where),
                                    f"{email} has no access to queue {key}"))


def _fetcher(model: ConfigModel, lines: dict[tuple[Any, ...], int], problems: list[Problem]) -> FetcherSettings:
    """``fetcher`` with the lease timeouts resolved: unset ones take ``kafka.consumer``'s.
    A heartbeat nobody wrote (``kafka.consumer``'s default beside a shorter session
    someone did write) becomes a third of the session; one written that does not fit
    is an error on its line."""
    lease, consumer = model.fetcher.lease, model.kafka.consumer
    session = lease.session_timeout_ms or consumer.session_timeout_ms
    heartbeat = lease.heartbeat_interval_ms or consumer.heartbeat_interval_ms
    written = lease.heartbeat_interval_ms is not None or "heartbeat_interval_ms" in consumer.model_fields_set
    if heartbeat >= session and not written:
        heartbeat = max(1, session // 3)
    if heartbeat >= session:
        loc = ("fetcher", "lease")
        problems.append(Problem(_line_for(loc, lines), _where(loc),
                                f"heartbeat_interval_ms {heartbeat} must be below session_timeout_ms {session} "
                                "(a third of it is usual)"))
    resolved = LeaseSettings(session_timeout_ms=session, heartbeat_interval_ms=heartbeat)
    return model.fetcher.model_copy(update={"lease": resolved})
