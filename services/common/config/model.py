"""The frozen runtime configuration: ``Config`` and what it holds.

Built once by the loader from the validated file (``schema``), with defaults
applied and secrets resolved; nothing here reads the environment or a file.
The lookups (``mailbox``, ``queue``, ``member``) index once, lazily.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from services.common.config.api_schema import ApiSettings
from services.common.config.blobs_schema import BlobSettings
from services.common.config.limits import MailLimits
from services.common.config.schema import (
    AutomaticMailSettings,
    FetcherSettings,
    IngressSettings,
    KafkaSettings,
    Member,
    MetricsSettings,
    Organization,
    ConsumeSettings,
    RateLimits,
    SenderSettings,
    Signature,
    SuspendedSettings,
    TicketerSettings,
)
from services.common.config.secrets import Secret


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
class TextMatch:
    """One condition on text: a case-insensitive substring (kept casefolded) or a
    regex compiled once, with re.IGNORECASE, for ``search``."""

    text: str | None = None
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True)
class HeaderMatch:
    name: str  # lower case
    value: TextMatch | None = None  # None: the header only has to be there


@dataclass(frozen=True)
class RuleMatch:
    """The conditions of a rule; every one given must hold."""

    sender: TextMatch | None = None  # `from:`, on the From address
    to: TextMatch | None = None
    cc: TextMatch | None = None
    subject: TextMatch | None = None
    header: HeaderMatch | None = None
    body: TextMatch | None = None
    authenticated: bool | None = None


@dataclass(frozen=True)
class RuleActions:
    """What a rule sets on the ticket a mail opens; None and () set nothing."""

    type: str | None = None
    components: tuple[str, ...] = ()
    assignee: str | None = None
    priority: str | None = None
    tags: tuple[str, ...] = ()
    queue: str | None = None


@dataclass(frozen=True)
class Rule:
    """A routing rule of a queue (services/router/rules.py applies them in order)."""

    name: str
    match: RuleMatch
    actions: RuleActions = RuleActions()
    drop: bool = False
    stop: bool = False


@dataclass(frozen=True)
class Queue:
    key: str
    name: str
    access: tuple[str, ...]
    allow_outbound_mail: bool
    mailboxes: tuple[Mailbox, ...]
    closed_reply: str = "follow_up"  # follow_up | reopen
    auto_close_days: int = 7  # 0: never
    limits: MailLimits = MailLimits()  # size limits on its incoming mail
    rules: tuple[Rule, ...] = ()  # routing rules, in order


@dataclass(frozen=True)
class S3Blobs:
    """``blobs.s3`` with its credentials resolved and its addressing style decided."""

    bucket: str
    prefix: str  # without slashes at either end; "" for the bucket's root
    endpoint_url: str | None  # None: AWS S3
    region: str | None
    access_key_id: Secret | None  # None (both): the default credential chain
    secret_access_key: Secret | None
    addressing_style: Literal["path", "virtual"]

    def describe(self) -> str:
        """Where the blobs are, for logs and ``config check``: never a credential."""
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        at = f" at {self.endpoint_url}" if self.endpoint_url else ""
        creds = f"keys from {self.access_key_id.source}" if self.access_key_id else "the default credential chain"
        return f"{where}{at} ({self.addressing_style} addressing, {creds})"


@dataclass(frozen=True)
class IngressLogin:
    """One ``ingress.auth.users`` account, its password resolved."""

    login: str
    password: Secret


@dataclass(frozen=True)
class Config:
    path: str
    kafka: KafkaSettings
    kafka_password: Secret | None
    topics: dict[str, str]
    database_url: str
    data_dir: Path
    blob_path: Path  # blobs.backend folder
    blobs: BlobSettings
    ingress: IngressSettings
    fetcher: FetcherSettings
    sender: SenderSettings
    consume: ConsumeSettings
    api: ApiSettings
    metrics: MetricsSettings
    organization: Organization
    queues: tuple[Queue, ...]
    # organization.message_id_key resolved; None: use the data folder's (config.keys)
    message_id_key: Secret | None = None
    rate_limits: RateLimits = RateLimits()
    api_session_secret: Secret | None = None  # api.session_secret, resolved
    api_oidc_client_secret: Secret | None = None  # api.auth.oidc.client_secret, resolved
    suspended: SuspendedSettings = SuspendedSettings()
    automatic_mail: AutomaticMailSettings = AutomaticMailSettings()
    ticketer: TicketerSettings = TicketerSettings()
    blob_s3: S3Blobs | None = None  # blobs.backend s3, resolved; None: the folder backend
    ingress_logins: tuple[IngressLogin, ...] = ()  # ingress.auth.users, passwords resolved

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
