"""deskmail.yaml: one declarative file for every process.

``load(path)`` parses and validates the file once, resolves secret references
(``{env: NAME}`` / ``{file: PATH}``) and returns a frozen ``Config``. Every error
names the line it was found on. Nothing else in deskmail reads the environment for
settings or secrets.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TOPIC_NAMES = {
    "inbound": "deskmail.mail.inbound",
    "commands": "deskmail.ticket.commands",
    "outbound": "deskmail.mail.outbound",
    "events": "deskmail.mail.events",
    "deadletter": "deskmail.deadletter",
}

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_QUEUE_KEY = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")


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


class Secret:
    """A resolved secret. Its value never shows in repr, str, logs or exceptions."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.source)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class SecretRef(_Model):
    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret is {env: NAME} or {file: PATH}, exactly one of them")
        return self


class ConsumerSettings(_Model):
    session_timeout_ms: int = Field(10000, ge=100)
    heartbeat_interval_ms: int = Field(3000, ge=50)
    max_poll_records: int = Field(500, ge=1)


class KafkaSettings(_Model):
    bootstrap_servers: tuple[str, ...] = ()
    client_id: str = "deskmail"
    group_prefix: str = "deskmail"
    partitions: int = Field(4, ge=1)
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretRef | None = None
    ssl_cafile: str | None = None
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    consumer: ConsumerSettings = ConsumerSettings()
    topics: dict[Literal["inbound", "commands", "outbound", "events", "deadletter"], str] = {}


class DatabaseSettings(_Model):
    url: str | None = None


class IngressSettings(_Model):
    listen: str = "127.0.0.1:2525"
    lmtp_listen: str | None = None  # LMTP for an MTA's final delivery (Postfix `lmtp:inet:HOST:PORT`); off when unset
    max_message_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, the ingress offers STARTTLS
    tls_key: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> "IngressSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("ingress TLS needs both tls_cert and tls_key")
        return self


class MarkSettings(_Model):
    mode: Literal["keyword", "seen", "move"] = "keyword"
    keyword: str = "$Deskmail"
    folder: str = "Deskmail/Processed"


class FetcherSettings(_Model):
    folder: str = "INBOX"
    mark: MarkSettings = MarkSettings()
    idle: bool = True
    idle_seconds: int = Field(25 * 60, ge=1, le=29 * 60)
    poll_interval_seconds: float = Field(30.0, gt=0)
    batch_size: int = Field(100, ge=1, le=5000)
    backoff_initial_seconds: float = Field(1.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)


class SenderSettings(_Model):
    retry_initial_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    give_up_after_seconds: float = Field(240.0, gt=0)  # then the mail is failed; below max.poll.interval
    timeout_seconds: float = Field(30.0, gt=0)


class ApiSettings(_Model):
    listen: str = "127.0.0.1:8080"
    user_header: str | None = None  # e.g. X-Forwarded-Email, set by an authenticating proxy


class BlobSettings(_Model):
    path: str | None = None
    inline_max_bytes: int = Field(512 * 1024, ge=0)


class Member(_Model):
    email: str
    name: str | None = None
    groups: tuple[str, ...] = ()

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if not _EMAIL.match(v):
            raise ValueError(f"{v!r} is not an email address")
        return v.lower()


class Organization(_Model):
    name: str = "deskmail"
    domains: tuple[str, ...] = ()
    members: tuple[Member, ...] = ()


class TicketDefaults(_Model):
    type: str | None = None
    components: tuple[str, ...] = ()


class ImapSettings(_Model):
    host: str
    port: int | None = Field(None, ge=1, le=65535)
    security: Literal["ssl", "starttls", "none"] = "ssl"
    login: str | None = None
    password: SecretRef
    folder: str | None = None
    cafile: str | None = None
    verify_tls: bool = True


class SmtpSettings(_Model):
    host: str
    port: int | None = Field(None, ge=1, le=65535)
    security: Literal["ssl", "starttls", "none"] = "ssl"
    login: str | None = None
    password: SecretRef | None = None
    address: str | None = None
    cafile: str | None = None
    verify_tls: bool = True


class Signature(_Model):
    alias: str = Field(min_length=1)
    text: str = ""


class MailboxModel(_Model):
    address: str
    accept_external: bool = False
    ticket: TicketDefaults = TicketDefaults()
    imap: ImapSettings | None = None
    ingress: bool = False
    smtp: SmtpSettings | None = None
    signatures: tuple[Signature, ...] = ()

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not _EMAIL.match(v):
            raise ValueError(f"{v!r} is not an email address")
        return v.lower()

    @model_validator(mode="after")
    def _one_inbound(self) -> "MailboxModel":
        if self.imap is None and not self.ingress:
            raise ValueError("a mailbox needs `imap:` settings or `ingress: true`")
        if self.imap is not None and self.ingress:
            raise ValueError("a mailbox has either `imap:` or `ingress: true`, not both")
        return self


class QueueModel(_Model):
    key: str
    name: str | None = None
    access: tuple[str, ...] = ()
    allow_outbound_mail: bool = False
    mailboxes: tuple[MailboxModel, ...] = ()

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not _QUEUE_KEY.match(v):
            raise ValueError("a queue key is 1-32 upper-case letters, digits or _, starting with a letter")
        return v


class MetricsSettings(_Model):
    host: str = "0.0.0.0"
    ports: dict[str, int] = {}


class ConfigModel(_Model):
    kafka: KafkaSettings = KafkaSettings()
    database: DatabaseSettings = DatabaseSettings()
    data_dir: str | None = None
    blobs: BlobSettings = BlobSettings()
    ingress: IngressSettings = IngressSettings()
    fetcher: FetcherSettings = FetcherSettings()
    sender: SenderSettings = SenderSettings()
    api: ApiSettings = ApiSettings()
    metrics: MetricsSettings = MetricsSettings()
    organization: Organization = Organization()
    queues: tuple[QueueModel, ...] = ()


# ---------------------------------------------------------------- frozen view


@dataclass(frozen=True)
class Imap:
    host: str
    port: int
    security: Literal["ssl", "starttls", "none"]
    login: str
    password: Secret
    folder: str
    cafile: str | None
    verify_tls: bool


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    security: Literal["ssl", "starttls", "none"]
    login: str | None
    password: Secret | None
    address: str
    cafile: str | None
    verify_tls: bool


@dataclass(frozen=True)
class Mailbox:
    address: str
    queue: str
    accept_external: bool
    ticket_type: str | None
    components: tuple[str, ...]
    imap: Imap | None
    ingress: bool
    smtp: Smtp | None
    signatures: tuple[Signature, ...]


@dataclass(frozen=True)
class Queue:
    key: str
    name: str
    access: tuple[str, ...]
    allow_outbound_mail: bool
    mailboxes: tuple[Mailbox, ...]


@dataclass(frozen=True)
class Config:
    path: str
    kafka: KafkaSettings
    kafka_password: Secret | None
    topics: dict[str, str]
    database_url: str
    data_dir: Path
    blob_path: Path
    blobs: BlobSettings
    ingress: IngressSettings
    fetcher: FetcherSettings
    sender: SenderSettings
    api: ApiSettings
    metrics: MetricsSettings
    organization: Organization
    queues: tuple[Queue, ...]

    # Lookups run for every mail on the router's hot path: index once, lazily.
    @cached_property
    def mailboxes(self) -> tuple[Mailbox, ...]:
        return tuple(m for q in self.queues for m in q.mailboxes)

    @cached_property
    def _mailbox_index(self) -> dict[str, Mailbox]:
        return {m.address: m for m in self.mailboxes}

    @cached_property
    def _member_index(self) -> dict[str, Member]:
        return {m.email: m for m in self.organization.members}

    @cached_property
    def own_addresses(self) -> frozenset[str]:
        """Addresses deskmail receives at or sends as: never a customer, never a recipient."""
        return frozenset({m.address for m in self.mailboxes} | {m.smtp.address for m in self.mailboxes if m.smtp})

    def mailbox(self, address: str) -> Mailbox | None:
        return self._mailbox_index.get(address.lower())

    def queue(self, key: str) -> Queue | None:
        return next((q for q in self.queues if q.key == key), None)

    def member(self, email: str) -> Member | None:
        return self._member_index.get(email.lower())


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
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            problems.append(Problem(_line_for(loc, lines), _where(loc), f"environment variable {ref.env} is not set"))
            return Secret("", f"env:{ref.env}")
        return Secret(value, f"env:{ref.env}")
    assert ref.file is not None
    try:
        value = Path(ref.file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        problems.append(Problem(_line_for(loc, lines), _where(loc), f"cannot read secret file {ref.file}: {exc.strerror}"))
        return Secret("", f"file:{ref.file}")
    return Secret(value, f"file:{ref.file}")


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
                            allow_outbound_mail=q.allow_outbound_mail, mailboxes=tuple(mailboxes)))

    kafka_password = None
    if model.kafka.sasl_password is not None:
        kafka_password = _resolve(model.kafka.sasl_password, ("kafka", "sasl_password"), lines, problems)
    if problems:
        raise ConfigError(path, problems)

    blob_path = Path(model.blobs.path) if model.blobs.path else data_dir / "blobs"
    if not blob_path.is_absolute():
        blob_path = base / blob_path
    return Config(
        path=path,
        kafka=model.kafka,
        kafka_password=kafka_password,
        topics={**TOPIC_NAMES, **{str(k): v for k, v in model.kafka.topics.items()}},
        database_url=model.database.url or f"sqlite:///{data_dir / 'deskmail.db'}",
        data_dir=data_dir,
        blob_path=blob_path,
        blobs=model.blobs,
        ingress=model.ingress,
        fetcher=model.fetcher,
        sender=model.sender,
        api=model.api,
        metrics=model.metrics,
        organization=model.organization,
        queues=tuple(queues),
    )
