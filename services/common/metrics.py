"""Every Prometheus metric deskmail exports, declared once.

Names follow ``deskmail_<service>_<what>_<unit>``; label values come from small,
closed sets (stage names, outcomes, configured mailbox addresses), never from mail
content.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common import build

# ---- every process
BUILD_INFO = Gauge(
    "deskmail_build_info",
    "Always 1; the labels say which release (version) and source revision (DESKMAIL_REVISION) this process runs.",
    ["version", "revision"],
)
BUILD_INFO.labels(version=build.version(), revision=build.revision()).set(1)

# ---- shared consume/produce loop (services.common.bus), labelled by stage
BUS_RECORDS = Counter(
    "deskmail_bus_records_processed_total",
    "Records a stage consumed and finished (effect durable, offset committable).",
    ["stage", "topic"],
)
BUS_DEADLETTERS = Counter(
    "deskmail_bus_deadletters_total",
    "Records a stage sent to the dead-letter topic, by error class.",
    ["stage", "error_class"],
)
BUS_RETRIES = Counter(
    "deskmail_bus_retries_total",
    "Transient failures a stage retried (broker, database or blob store unavailable).",
    ["stage"],
)
BUS_BATCH_FALLBACKS = Counter(
    "deskmail_bus_batch_fallbacks_total",
    "Polled batches a batch step could not process at once (a dependency failed), processed record by record.",
    ["stage"],
)
BUS_BATCH_SECONDS = Histogram(
    "deskmail_bus_batch_seconds",
    "Time to process one polled batch, from poll to offset commit.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BUS_LAG = Gauge(
    "deskmail_bus_consumer_lag_records",
    "Records behind the partition high watermark, as seen by this consumer.",
    ["stage", "topic", "partition"],
)
BUS_PAUSED = Gauge(
    "deskmail_bus_paused",
    "1 while a stage has paused its partitions because a dependency stayed unavailable.",
    ["stage"],
)
BUS_WAITING = Gauge(
    "deskmail_bus_waiting_partitions",
    "Partitions a stage paused alone until a record's retry is due (the sender's mail waiting out a 4xx).",
    ["stage"],
)
BUS_PRODUCED = Counter(
    "deskmail_bus_records_produced_total",
    "Records acknowledged by the broker, by topic.",
    ["stage", "topic"],
)

# ---- fetcher
FETCHER_MESSAGES = Counter(
    "deskmail_fetcher_messages_total",
    "Messages fetched from a mailbox and acknowledged by the broker.",
    ["mailbox", "source"],
)
FETCHER_BYTES = Counter(
    "deskmail_fetcher_bytes_total",
    "Bytes of raw mail fetched and acknowledged.",
    ["mailbox"],
)
FETCHER_ERRORS = Counter(
    "deskmail_fetcher_mailbox_errors_total",
    "Mailbox failures (login, connection, protocol), by reason class.",
    ["mailbox", "reason"],
)
FETCHER_UP = Gauge(
    "deskmail_fetcher_mailbox_up",
    "1 while the mailbox session is logged in and working, 0 while it is failing.",
    ["mailbox"],
)
FETCHER_LAST_SUCCESS = Gauge(
    "deskmail_fetcher_mailbox_last_success_timestamp_seconds",
    "Unix time of the last successful check of the mailbox.",
    ["mailbox"],
)
FETCHER_UIDVALIDITY_CHANGES = Counter(
    "deskmail_fetcher_uidvalidity_changes_total",
    "Times a folder's UIDVALIDITY changed (mail is re-read; duplicates are absorbed downstream).",
    ["mailbox"],
)
FETCHER_LEASED_MAILBOXES = Gauge(
    "deskmail_fetcher_leased_mailboxes",
    "IMAP mailboxes this fetcher replica holds now (the partitions of the lease group assigned to it).",
)
FETCHER_LEASE_CHANGES = Counter(
    "deskmail_fetcher_lease_changes_total",
    "Mailboxes this fetcher replica acquired or released (rebalances, failover, shutdown), by change.",
    ["change"],
)
FETCHER_INGRESS = Counter(
    "deskmail_fetcher_ingress_sessions_total",
    "SMTP/LMTP ingress transactions, by reply class.",
    ["outcome"],
)
FETCHER_INGRESS_DEFERRALS = Counter(
    "deskmail_fetcher_ingress_deferrals_total",
    "SMTP/LMTP ingress answers that make the sending MTA retry later, by reason "
    "(services.fetcher.ingress_limits.DEFER_REASONS: sessions, inflight_bytes, broker, timeout).",
    ["reason"],
)
FETCHER_INGRESS_REFUSALS = Counter(
    "deskmail_fetcher_ingress_refusals_total",
    "SMTP/LMTP ingress clients refused for who they are: network (554 5.7.1 at connect, outside "
    "ingress.allowed_networks), auth_required (530 5.7.0, MAIL without AUTH), auth_failed (535 5.7.8).",
    ["reason"],
)
FETCHER_INGRESS_DRAINING = Gauge(
    "deskmail_fetcher_ingress_draining",
    "1 while the ingress drains on SIGTERM (listeners closed, transactions in flight finishing), else 0.",
)
FETCHER_INGRESS_SESSIONS = Gauge(
    "deskmail_fetcher_ingress_open_sessions",
    "SMTP/LMTP connections open now (capped by ingress.max_sessions).",
)
FETCHER_INGRESS_INFLIGHT = Gauge(
    "deskmail_fetcher_ingress_inflight_bytes",
    "Message bytes received and not yet answered, over all sessions (capped by ingress.max_inflight_bytes).",
)

# ---- router
ROUTER_COMMANDS = Counter(
    "deskmail_router_commands_total",
    "Ticket commands produced, by action and mail class.",
    ["action", "classification"],
)
ROUTER_REJECTIONS = Counter(
    "deskmail_router_rejections_total",
    "Mail that makes no ticket, by reason.",
    ["reason"],
)
ROUTER_RULE_MATCHES = Counter(
    "deskmail_router_rule_matches_total",
    "Mail a routing rule matched, by queue and rule name (both from the config).",
    ["queue", "rule"],
)
ROUTER_PARSE_SECONDS = Histogram(
    "deskmail_router_parse_seconds",
    "Time to parse and route one message.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
)

# ---- ticketer
TICKETER_APPLIED = Counter(
    "deskmail_ticketer_commands_applied_total",
    "Ticket commands applied to the database, by outcome.",
    ["outcome"],
)
TICKETER_APPLY_SECONDS = Histogram(
    "deskmail_ticketer_apply_seconds",
    "Time to apply one command in its own transaction.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
)

MAIL_TO_TICKET_SECONDS = Histogram(
    "deskmail_mail_to_ticket_seconds",
    "From a mail's arrival (its IMAP INTERNALDATE, or its receipt by the ingress) to the commit of its ticket or "
    "comment, by mailbox. Duplicates, rejections and released mail are not observed.",
    ["mailbox"],
    # Fine from 0.1 s to 1 s, where a healthy pipeline's quantiles lie (50 ms steps up to
    # 0.3 s, so histogram_quantile can tell 0.25 s from 0.3 s), coarse beyond, where the
    # alert's minute and a backlog's hours lie.
    buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1, 1.5, 2, 2.5, 5, 10, 30, 60,
             300, 900, 3600),
)

TICKETER_RATE_LIMITED = Counter(
    "deskmail_ticketer_rate_limited_total",
    "Mails from outside set aside as rate_limited (suspended), by the limit they passed: sender or ticket.",
    ["limit"],
)

TICKETER_BOUNCES = Counter(
    "deskmail_ticketer_bounces_total",
    "Bounces (delivery status notifications) applied, by result: bounced (the outgoing mail it reports on is "
    "marked bounced), delayed (a delay warning for mail deskmail sent; marks nothing), unmatched (it names no "
    "mail deskmail sent: kept on its thread, or suspended).",
    ["result"],
)

TICKETER_AUTO_CLOSED = Counter(
    "deskmail_ticketer_auto_closed_total",
    "Resolved tickets closed automatically after their queue's auto_close_days.",
    ["queue"],
)

# ---- suspended mail (rejections kept for release; the gauge is the api's, services.api.ticket_metrics)
SUSPENDED_EXPIRED = Counter(
    "deskmail_suspended_expired",
    "Suspended mail the ticketer deleted after suspended.retention_days (with its raw mail, when nothing else refers to it).",
)
# deskmail_suspended{queue,reason}: a collector of the api, read from the database at each scrape.

# ---- the ticket workflow, observed where the change is made (api, ticketer)
_DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 345600, 604800, 1209600, 2592000)
TICKET_FIRST_RESPONSE_SECONDS = Histogram(
    "deskmail_ticket_first_response_seconds",
    "From a ticket's opening mail to the first mail an agent sent on it.",
    ["queue"],
    buckets=_DURATION_BUCKETS,
)
TICKET_RESOLUTION_SECONDS = Histogram(
    "deskmail_ticket_resolution_seconds",
    "From a ticket's opening mail to when it became resolved or closed (again after each reopening).",
    ["queue"],
    buckets=_DURATION_BUCKETS,
)

# ---- consumer lag, measured from outside the consumers (the api's services.api.lag)
CONSUMER_GROUP_LAG = Gauge(
    "deskmail_consumer_group_lag_records",
    "Records a stage's consumer group has not committed yet, per input partition, read from the broker: "
    "it shows a stage that is scaled to zero, hung or crash-looping, which measures no lag of its own.",
    ["stage", "topic", "partition"],
)
CONSUMER_GROUP_LAG_MEASURED = Gauge(
    "deskmail_consumer_group_lag_measured_timestamp_seconds",
    "When the consumer group lag was last read from the broker (unix time).",
)

# ---- api requests
API_REQUESTS = Counter(
    "deskmail_api_requests_total",
    "HTTP requests the api answered, by method, route template and status class (2xx, 3xx, 4xx, 5xx).",
    ["method", "route", "status"],
)
API_REQUEST_SECONDS = Histogram(
    "deskmail_api_request_seconds",
    "Time to answer one HTTP request, by route template.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# ---- sender
SENDER_MAILS = Counter(
    "deskmail_sender_mails_total",
    "Outbound mail outcomes: sent and failed are final (one per mail), retrying counts failed attempts.",
    ["outcome"],
)
SENDER_SEND_SECONDS = Histogram(
    "deskmail_sender_send_seconds",
    "Time of one SMTP attempt, connecting and logging in included when no open session was reused.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SENDER_SMTP_ERRORS = Counter(
    "deskmail_sender_smtp_errors_total",
    "Failed SMTP attempts, by kind (services.common.smtp_failures.KINDS: connect, timeout, tls, login, recipients...).",
    ["kind"],
)
