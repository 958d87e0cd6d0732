"""Wires the router's pure core to Kafka and the blob store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.common import metrics, suspended
from services.common.blobs import BlobMissing, BlobStore, blob_store
from services.common.bus import Out, Record
from services.common.codec import CodecError, codec
from services.common.config import Config, Secret, existing_message_id_key
from services.common.config.secrets import SecretUnavailable
from services.common.errors import BadRecord, Transient
from services.common.runtime import Health
from services.common.stage import ROUTER, StageContext, run_stage
from services.router.mailparse import MalformedMail
from services.router.route import UnknownMailbox, route

log = logging.getLogger("deskmail.router")
STAGE = "router"
SPEC = ROUTER


class RouterStep:
    def __init__(self, config: Config, blobs: BlobStore):
        self.config = config
        self.blobs = blobs
        self.inbound = codec("InboundMail")
        self.commands = codec("TicketCommand")
        self.topic = config.topics["commands"]
        self._own_key = _own_key(config)
        # Metric children by label values: the values are few (actions, classifications).
        self._counted: dict[tuple[str, str], Any] = {}

    def own_key(self) -> Secret | None:
        """The key deskmail signs its Message-IDs with, to know its own mail (a loop,
        a bounce of it). ``route`` asks for it only for mail that may be deskmail's
        (a bounce, an X-Deskmail-Ticket header); while there is none it is looked
        for again then (one stat): the api makes the data folder's key on the first
        reply, usually after the router started, and a bounce of that reply may come
        back within a second."""
        if self._own_key is None:
            self._own_key = _own_key(self.config, quiet=True)
        return self._own_key

    def process(self, record: Record) -> Sequence[Out]:
        started = time.perf_counter()
        try:
            inbound = self.inbound.decode(record.value)
        except CodecError as exc:
            raise BadRecord(str(exc)) from exc
        raw = inbound["raw"]
        if raw is None:
            if not inbound["blob_ref"]:
                raise BadRecord(f"inbound mail {inbound['id']} has neither raw bytes nor a blob reference",
                                error_class="MissingPayload")
            try:
                raw = self.blobs.get(inbound["blob_ref"])
            except BlobMissing as exc:
                raise BadRecord(str(exc)) from exc
            except OSError as exc:
                raise Transient(f"blob store unavailable: {exc}") from exc
        try:
            routed = route(inbound, raw, self.config, self.own_key)
        except (MalformedMail, UnknownMailbox) as exc:
            raise BadRecord(f"{inbound['id']}: {exc}") from exc
        command = routed.command
        try:
            for payload in routed.attachments:
                # Derived from the raw mail, which stays in the inbound topic:
                # a replay stores it again, so it needs no fsync (see blobs.py).
                self.blobs.put(payload, durable=False)
            if routed.keeps_original:
                command["raw_ref"] = self._keep_original(inbound, raw)
        except OSError as exc:
            raise Transient(f"blob store unavailable: {exc}") from exc
        self._count(command["action"], command["classification"])
        for rule in command["matched_rules"]:
            metrics.ROUTER_RULE_MATCHES.labels(command["queue"], rule).inc()
        if command["action"] == "reject":
            metrics.ROUTER_REJECTIONS.labels(suspended.reason_code(command["reason"])).inc()
            log.info(
                "rejected",
                extra={"stage": STAGE, "mailbox": command["mailbox"], "queue": command["queue"],
                       "command": command["id"], "reason": command["reason"]},
            )
        elif inbound.get("release_of"):
            log.info(
                "released",
                extra={"stage": STAGE, "mailbox": command["mailbox"], "queue": command["queue"],
                       "command": command["id"], "reason": command["reason"]},
            )
        metrics.ROUTER_PARSE_SECONDS.observe(time.perf_counter() - started)
        try:
            value = self.commands.encode(command)
        except CodecError as exc:  # a value the parser let through: this mail alone is set aside
            raise BadRecord(f"{inbound['id']}: {exc}", error_class="UnencodableCommand") from exc
        return [Out(self.topic, routed.key, value)]

    def _count(self, action: str, classification: str) -> None:
        child = self._counted.get((action, classification))
        if child is None:
            child = self._counted[(action, classification)] = metrics.ROUTER_COMMANDS.labels(action, classification)
        child.inc()

    def _keep_original(self, inbound: dict[str, Any], raw: bytes) -> str:
        """The reference of the raw mail of a refusal, for the suspended list.

        A claim-checked mail is in the store already. Otherwise it is written with
        fsync: suspended mail is kept for ``suspended.retention_days``, longer than
        the inbound topic may keep the record, so the blob may become the only copy.
        Raises OSError.
        """
        if inbound["blob_ref"]:
            return str(inbound["blob_ref"])
        return self.blobs.put(raw, durable=True)


def _own_key(config: Config, quiet: bool = False) -> Secret | None:
    """The Message-ID key, to recognise deskmail's own mail coming back; None
    (the check is off, said once unless ``quiet``) when this process cannot read it."""
    try:
        key = existing_message_id_key(config)
    except SecretUnavailable as exc:
        if not quiet:
            log.warning("deskmail's own mail is recognised by its From only",
                        extra={"stage": STAGE, "error": str(exc)})
        return None
    if key is None and not quiet:
        log.info("no Message-ID key yet: deskmail's own mail is recognised by its From only", extra={"stage": STAGE})
    elif key is not None and quiet:
        log.info("Message-ID key found: deskmail's own mail is recognised by its signed Message-ID",
                 extra={"stage": STAGE})
    return key


def run_router(config: Config, stop: threading.Event, health: Health, bootstrap: Sequence[str] | None = None) -> None:
    def build(ctx: StageContext) -> RouterStep:
        return RouterStep(ctx.config, blob_store(ctx.config))

    run_stage(config, SPEC, build, stop, health, bootstrap)
