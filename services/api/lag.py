"""Consumer lag read from the broker, not from the consumers: the api's ``LagWatch``.

Each stage's consumers report their own lag (``deskmail_bus_consumer_lag_records``),
which is exactly what a stage scaled to zero, hung or crash-looping cannot do. The
api, which runs whatever the stages do, reads every consuming stage's committed
offsets and its input partitions' log ends from the broker every
``INTERVAL_SECONDS`` and sets ``deskmail_consumer_group_lag_records{stage,topic,partition}``
and ``deskmail_consumer_group_lag_measured_timestamp_seconds``. Alerts use these
(deploy/prometheus/rules.yml). Several api replicas report the same values: the
alerts take their max.

A broker that cannot be read leaves the last values and the old timestamp in
place (the DeskmailLagUnmeasured alert says so) and logs a warning at most once
a minute; the watch never stops the api.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from services.common import metrics
from services.common.config import Config
from services.common.stage import STAGES, group_id

log = logging.getLogger("deskmail.api")

INTERVAL_SECONDS = 15.0
WARN_EVERY_SECONDS = 60.0

GroupLag = Callable[[str, Sequence[str]], Mapping[tuple[str, int], int]]


class LagWatch:
    """Reads the stages' lag with ``group_lag`` (``Kafka.group_lag``) on a thread of its own."""

    def __init__(self, config: Config, group_lag: GroupLag, interval: float = INTERVAL_SECONDS):
        self.config = config
        self.group_lag = group_lag
        self.interval = interval
        self._warned_at: float | None = None

    def measure(self) -> bool:
        """One round over every stage; True when all were read."""
        ok = True
        for stage, spec in STAGES.items():
            group = group_id(self.config, stage)
            topics = [self.config.topics[key] for key in spec.inputs]
            try:
                lag = self.group_lag(group, topics)
            except Exception as exc:  # noqa: BLE001 - a broker outage must not stop the api
                ok = False
                now = time.monotonic()
                if self._warned_at is None or now - self._warned_at >= WARN_EVERY_SECONDS:
                    self._warned_at = now
                    log.warning("consumer lag unavailable", extra={"stage": stage, "error": str(exc)})
                continue
            for (topic, partition), records in lag.items():
                metrics.CONSUMER_GROUP_LAG.labels(stage, topic, str(partition)).set(records)
        if ok:
            metrics.CONSUMER_GROUP_LAG_MEASURED.set(time.time())
        return ok

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.measure()
            stop.wait(self.interval)
