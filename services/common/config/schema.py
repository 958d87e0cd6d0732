"""deskmail.yaml as written: the pydantic models that validate the file.

Each model checks one section: types, ranges, closed choices and the rules a
single section can check on its own. Rules across sections (a queue's access
names members, an address is used once) and defaults that depend on other
sections are applied when the loader freezes the result into ``model.Config``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.common import mailrules, routing
from services.common.config.api_schema import ApiSettings
from services.common.config.base import Section as _Model
from services.common.config.blobs_schema import BlobSettings
from services.common.config.hostport import HostPort, ListenAddress
from services.common.config.limits import LimitsSettings, QueueLimitsSettings
from services.common.config.rules_schema import RuleModel
from services.common.config.secrets import SecretRef

TOPIC_NAMES = {
    "inbound": "deskmail.mail.inbound",
    "commands": "deskmail.ticket.commands",
    "outbound": "deskmail.mail.outbound",
    "events": "deskmail.mail.events",
    "deadletter": "deskmail.deadletter",
    "leases": "deskmail.fetcher.leases",
}

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_AUTHSERV_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")




TopicKey = Literal["inbound", "commands", "outbound", "events", "deadletter", "leases"]
# Long enough to replay a week of mail; dead letters until someone has looked at them.
# The lease topic carries no records (its consumer group is the point): an hour.
DEFAULT_RETENTION_DAYS: dict[str, float] = {"inbound": 7, "commands": 7, "outbound": 7, "events": 7,
                                            "deadletter": 30, "leases": 1 / 24}


class ConsumerSettings(_Model):
    session_timeout_ms: int = Field(10000, ge=100)
    heartbeat_interval_ms: int = Field(3000, ge=50)
    max_poll_records: int = Field(500, ge=1)


class ProducerSettings(_Model):
    # Broker-side deduplication of the producer's retries (acks=all is fixed). Off only
    # for a broker that forgets producer ids when it restarts (the local in-memory
    # broker): an idempotent producer fails for good there; a warning says so at start.
    idempotence: bool = True


class KafkaSettings(_Model):
    bootstrap_servers: tuple[str, ...] = ()
    client_id: str = "deskmail"
    group_prefix: str = "deskmail"
    partitions: int = Field(4, ge=1)
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    # Plain, or {env: NAME} so each Deployment can log in as its own user from one file.
    sasl_username: str | SecretRef | None = None
    sasl_password: SecretRef | None = None
    ssl_cafile: str | None = None
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Topic configs deskmail declares (services/common/topics.py). None: 2 with a
    # replication factor of 3 or more, else 1.
    min_insync_replicas: int | None = Field(None, ge=1)
    # Days each topic keeps its records (0: forever); keys as in `topics`.
    retention_days: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RETENTION_DAYS))
    consumer: ConsumerSettings = ConsumerSettings()
    producer: ProducerSettings = ProducerSettings()
    topics: dict[TopicKey, str] = {}

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(DEFAULT_RETENTION_DAYS))
        if unknown:
            raise ValueError(f"unknown topic {', '.join(unknown)}: the topics are {', '.join(DEFAULT_RETENTION_DAYS)}")
        for key, days in v.items():
            if days < 0:
                raise ValueError(f"retention_days.{key} must be 0 (forever) or more days")
        return {**DEFAULT_RETENTION_DAYS, **v}

    @model_validator(mode="after")
    def _insync_fits(self) -> "KafkaSettings":
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas {self.min_insync_replicas} is more than the replication factor "
                             f"{self.replication_factor}: every write would be refused")
        return self


class DatabaseSettings(_Model):
    url: str | None = None


DEFAULT_INFLIGHT_BYTES = 128 * 1024 * 1024

# Who may hand mail to the ingress without AUTH: loopback, the RFC 1918 private ranges and
# IPv6 unique local addresses (where an MTA in the same cluster or network connects from).
DEFAULT_ALLOWED_NETWORKS: tuple[str, ...] = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
_LOGIN = re.compile(r"^[^\s\x00-\x1f\x7f]{1,256}$")


class IngressUser(_Model):
    """One SMTP AUTH account of the ingress: a login and a secret reference for its password."""

    login: str
    password: SecretRef

    @field_validator("login")
    @classmethod
    def _login(cls, v: str) -> str:
        if not _LOGIN.match(v):
            raise ValueError("a login is 1 to 256 characters without spaces or control characters")
        return v


class IngressAuth(_Model):
    users: list[IngressUser] = []

    @model_validator(mode="after")
    def _unique(self) -> "IngressAuth":
        seen: set[str] = set()
        for user in self.users:
            if user.login.lower() in seen:
                raise ValueError(f"the login {user.login!r} is listed twice")
            seen.add(user.login.lower())
        return self


class IngressSettings(_Model):
    listen: ListenAddress = HostPort("127.0.0.1", 2525)
    lmtp_listen: ListenAddress | None = None  # LMTP for an MTA's final delivery (Postfix `lmtp:inet:HOST:PORT`); off when unset
    max_message_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    # Open connections at once, SMTP and LMTP together; one more is answered 421 4.3.2 and closed.
    max_sessions: int = Field(16, ge=1)
    # Message bytes received and not yet answered, over all sessions; beyond it 451 4.3.2.
    # Default: 128 MiB, or max_message_bytes if that is larger (so any allowed message fits).
    max_inflight_bytes: int = Field(DEFAULT_INFLIGHT_BYTES, ge=1024)
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, the ingress offers STARTTLS
    tls_key: str | None = None
    # deskmail is the receiving server for ingress mail: it checks DKIM, SPF and DMARC and
    # writes `Authentication-Results: <authserv_id>; ...` on top (services/fetcher/mailauth.py).
    # Default: the machine's fully qualified host name.
    authserv_id: str = Field(default_factory=socket.getfqdn, min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    dns_timeout_seconds: float = Field(5.0, gt=0, le=60)  # per lookup; beyond it the result is temperror
    dns_servers: list[str] = []  # host or host:port; empty: the system's resolvers
    # Clients allowed to hand over mail without AUTH (CIDR); any other client gets 554 5.7.1
    # at connect, unless `auth.users` are set: then it may send after AUTH (SMTP only).
    allowed_networks: tuple[str, ...] = DEFAULT_ALLOWED_NETWORKS
    auth: IngressAuth = IngressAuth()  # SMTP AUTH PLAIN/LOGIN, offered after STARTTLS or on loopback
    # On SIGTERM: how long transactions in flight may take before their sessions get 421.
    drain_seconds: float = Field(30.0, gt=0, le=600)

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for text in v:
            try:
                ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise ValueError(f"{text!r} is not a network in CIDR notation (e.g. 10.0.0.0/8): {exc}") from None
        return v

    @model_validator(mode="after")
    def _someone_may_deliver(self) -> "IngressSettings":
        if not self.allowed_networks and not self.auth.users:
            raise ValueError("ingress.allowed_networks is empty and ingress.auth has no users: nobody could "
                             "deliver mail")
        return self

    @model_validator(mode="after")
    def _auth_over_tls(self) -> "IngressSettings":
        if self.auth.users and self.tls_cert is None and not _loopback(self.listen.host):
            raise ValueError("ingress.auth needs ingress.tls_cert and tls_key: AUTH is offered only after "
                             "STARTTLS (or on loopback), so passwords never cross the network in clear")
        return self

    @model_validator(mode="before")
    @classmethod
    def _inflight_default(cls, data: object) -> object:
        if isinstance(data, dict) and "max_inflight_bytes" not in data:
            size = data.get("max_message_bytes")
            if isinstance(size, int) and size > DEFAULT_INFLIGHT_BYTES:
                return {**data, "max_inflight_bytes": size}
        return data

    @model_validator(mode="after")
    def _tls_pair(self) -> "IngressSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("ingress TLS needs both tls_cert and tls_key")
        return self

    @model_validator(mode="after")
    def _one_message_fits(self) -> "IngressSettings":
        if self.max_inflight_bytes < self.max_message_bytes:  # such a message would be deferred forever
            raise ValueError("ingress.max_inflight_bytes must be at least ingress.max_message_bytes")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MarkSettings(_Model):
    mode: Literal["keyword", "seen", "move"] = "keyword"
    keyword: str = "$Deskmail"
    folder: str = "Deskmail/Processed"


class LeaseSettings(_Model):
    """How long a fetcher replica's mailboxes stay with it when it stops answering
    (services/fetcher/leases.py): the session timeout of the lease group is the
    failover bound. Unset: the value of ``kafka.consumer``."""

    session_timeout_ms: int | None = Field(None, ge=100)
    heartbeat_interval_ms: int | None = Field(None, ge=50)


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
    # Partitions of the lease topic (kafka.topics.leases), created once by `deskmail topics
    # create`; each mailbox belongs to one by a hash of its address. The most fetcher
    # replicas that can hold mailboxes at once.
    lease_partitions: int = Field(16, ge=1, le=10_000)
    lease: LeaseSettings = LeaseSettings()


class SenderSettings(_Model):
    retry_initial_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    give_up_after_seconds: float = Field(240.0, gt=0)  # then the mail is failed; its partition waits meanwhile
    timeout_seconds: float = Field(30.0, gt=0)
    # The most SMTP sessions open to one server and login at once, and so the mails
    # going out to it at once. 3 is what Exchange Online allows one mailbox (432 4.3.2 beyond).
    smtp_sessions: int = Field(3, ge=1, le=50)


class TicketerSettings(_Model):
    # A reply to mail deskmail does not know yet waits this long for that mail (it may
    # be on another partition) before it opens a ticket of its own; 0: never waits.
    reply_wait_seconds: float = Field(10.0, ge=0, le=600)


class DeadLetterLimitSettings(_Model):
    percent: float = Field(50.0, ge=0, le=100)  # more than this share ...
    of_last: int = Field(100, ge=1, le=100_000)  # ... of the last N records stops the stage


class StageConsumeSettings(_Model):
    deadletter_limit: DeadLetterLimitSettings | None = None  # None: consume.deadletter_limit


class ConsumeSettings(_Model):
    """How the router, ticketer and sender handle failures (services.common.bus)."""

    transient_wait_seconds: float = Field(30.0, gt=0, le=240)  # then pause; below max.poll.interval.ms
    deadletter_limit: DeadLetterLimitSettings = DeadLetterLimitSettings()
    stages: dict[str, StageConsumeSettings] = {}  # per-stage overrides

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: dict[str, StageConsumeSettings]) -> dict[str, StageConsumeSettings]:
        unknown = sorted(set(v) - {"router", "ticketer", "sender"})
        if unknown:
            raise ValueError(f"unknown stage {', '.join(unknown)}: the consuming stages are router, ticketer, sender")
        return v


class SuspendedSettings(_Model):
    """Suspended mail: rejections kept with their raw mail, for an admin to release."""

    # The ticketer deletes suspended mail received longer ago, with its raw mail; 0: keep it forever.
    retention_days: int = Field(30, ge=0, le=3650)


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


class SenderAuthentication(_Model):
    """Whose Authentication-Results (RFC 8601) prove a member's From: see services/router/senderauth.py."""

    trusted_authserv_ids: tuple[str, ...] = ()  # e.g. mx.google.com; empty: members are trusted by From

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for authserv_id in v:
            if not _AUTHSERV_ID.match(authserv_id):
                raise ValueError(f"{authserv_id!r} is not a host name (the authserv-id a receiving server writes)")
        return tuple(authserv_id.lower().rstrip(".") for authserv_id in v)


class Organization(_Model):
    name: str = "deskmail"
    domains: tuple[str, ...] = ()
    members: tuple[Member, ...] = ()
    # Signs the token in every outgoing Message-ID (mailrules.new_message_id).
    # Unset: a key made once in <data_dir>/message-id.key (config.keys).
    message_id_key: SecretRef | None = None
    admins: tuple[str, ...] = ()  # members' emails or group:NAME; they see every queue and its settings
    sender_authentication: SenderAuthentication = SenderAuthentication()


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


def _one_line(field: str, value: str | None) -> str | None:
    """A value that ends up in a mail header (a From name): one line, or a config error."""
    if value is not None:
        mailrules.check_header_text(field, value)
    return value


class Signature(_Model):
    alias: str = Field(min_length=1)
    text: str = ""

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        return _one_line("the alias", v) or v


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
    # Customer mail on a closed ticket: a new ticket linked to it, or the old one reopened.
    closed_reply: Literal["follow_up", "reopen"] = "follow_up"
    # A resolved ticket without customer mail closes by itself after this many days; 0: never.
    auto_close_days: int = Field(default=7, ge=0, le=3650)
    limits: QueueLimitsSettings | None = None  # this queue's size limits over the top-level `limits:`
    mailboxes: tuple[MailboxModel, ...] = ()
    # Routing rules, tried in order after the address's defaults (services/router/rules.py).
    rules: tuple[RuleModel, ...] = Field(default=(), max_length=routing.MAX_RULES)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not mailrules.is_queue_key(v):
            raise ValueError(mailrules.QUEUE_KEY_RULE)
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _one_line("the queue name", v)


class MetricsSettings(_Model):
    host: str = "127.0.0.1"  # Kubernetes: 0.0.0.0, so Prometheus can scrape the pod (deploy/ sets it)
    ports: dict[str, int] = {}


class RateLimit(_Model):
    """More than ``mails`` in ``minutes`` (by the mails' own arrival times) are
    set aside as ``rate_limited`` (suspended, releasable); ``mails: 0`` turns it off."""

    mails: int = Field(20, ge=0)
    minutes: int = Field(10, ge=1, le=24 * 60)


class RateLimits(_Model):
    """Limits on mail from outside the organization (members are never limited)."""

    per_sender: RateLimit = RateLimit()
    per_ticket: RateLimit = RateLimit(mails=50)


class AutomaticMailSettings(_Model):
    """Which mail counts as written by a machine beyond the fixed rules (services/router/classify.py).

    Machine mail on a known thread is stored on its ticket and changes nothing; off
    any thread it is suspended."""

    # Mail with List-Id, List-Unsubscribe or Precedence: list (newsletters, mailing lists):
    # automatic: machine mail (suspended as `bulk` when it belongs to no thread);
    # accept: a person's mail like any other (customers who write through a list).
    mailing_lists: Literal["automatic", "accept"] = "automatic"


class ConfigModel(_Model):
    kafka: KafkaSettings = KafkaSettings()
    database: DatabaseSettings = DatabaseSettings()
    data_dir: str | None = None
    blobs: BlobSettings = BlobSettings()
    ingress: IngressSettings = IngressSettings()
    fetcher: FetcherSettings = FetcherSettings()
    sender: SenderSettings = SenderSettings()
    ticketer: TicketerSettings = TicketerSettings()
    consume: ConsumeSettings = ConsumeSettings()
    api: ApiSettings = ApiSettings()
    metrics: MetricsSettings = MetricsSettings()
    organization: Organization = Organization()
    rate_limits: RateLimits = RateLimits()
    limits: LimitsSettings = LimitsSettings()
    automatic_mail: AutomaticMailSettings = AutomaticMailSettings()
    suspended: SuspendedSettings = SuspendedSettings()
    queues: tuple[QueueModel, ...] = ()
