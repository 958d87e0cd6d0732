"""deskmail.yaml: one declarative file for every process.

``load(path)`` parses and validates the file once, resolves secret references
(``{env: NAME}`` / ``{file: PATH}``) and returns a frozen ``Config``. Every error
names the line it was found on. Nothing else in deskmail reads the environment for
settings or secrets.

The package: ``schema`` (the file as written), ``model`` (the frozen runtime
objects and their lookups, routing rules included), ``rules_schema`` (routing
rules as written), ``secrets`` (references and ``Secret``), ``hostport``
(listen addresses), ``blobs_schema`` (the ``blobs:`` section), ``loader`` (YAML with
line numbers, ``load``, ``ConfigError``), ``keys`` (the Message-ID key,
``message_id_key``). Import from here.
"""

from services.common.config.api_schema import ApiSettings, OidcSettings
from services.common.config.blobs_schema import BlobSettings, S3Settings
from services.common.config.hostport import HostPort
from services.common.config.keys import existing_message_id_key, message_id_key
from services.common.config.loader import ConfigError, Problem, load, parse_text
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
from services.common.config.schema import (
    TOPIC_NAMES,
    ConfigModel,
    ConsumerSettings,
    DatabaseSettings,
    FetcherSettings,
    ImapSettings,
    IngressSettings,
    KafkaSettings,
    LeaseSettings,
    MailboxModel,
    MarkSettings,
    Member,
    MetricsSettings,
    Organization,
    ProducerSettings,
    QueueModel,
    ConsumeSettings,
    SenderAuthentication,
    SenderSettings,
    Signature,
    SmtpSettings,
    SuspendedSettings,
    TicketDefaults,
)
from services.common.config.secrets import Secret, SecretRef

__all__ = [
    "TOPIC_NAMES",
    "ApiSettings",
    "BlobSettings",
    "Config",
    "ConfigError",
    "ConfigModel",
    "ConsumerSettings",
    "DatabaseSettings",
    "FetcherSettings",
    "HeaderMatch",
    "HostPort",
    "Imap",
    "ImapSettings",
    "IngressLogin",
    "IngressSettings",
    "KafkaSettings",
    "ProducerSettings",
    "LeaseSettings",
    "Mailbox",
    "MailboxModel",
    "MarkSettings",
    "OidcSettings",
    "Member",
    "MetricsSettings",
    "Organization",
    "Problem",
    "Queue",
    "QueueModel",
    "Rule",
    "RuleActions",
    "RuleMatch",
    "S3Blobs",
    "S3Settings",
    "Secret",
    "SecretRef",
    "ConsumeSettings",
    "SenderAuthentication",
    "SenderSettings",
    "Signature",
    "Smtp",
    "SmtpSettings",
    "SuspendedSettings",
    "TextMatch",
    "TicketDefaults",
    "load",
    "existing_message_id_key",
    "message_id_key",
    "parse_text",
]
