"""The dead-letter limit: a stage that dead-letters too much stops instead.

One bad mail is dead-lettered and the stage goes on. But when a bad deploy or a
broken config makes *every* record fail, going on would drain the whole input
topic into ``deskmail.deadletter``; the limit stops the stage first, and the
supervisor's restarts plus the DeskmailStageDown / DeskmailDeadLetters alerts
bring a person in. Replaying what was dead-lettered before the stop is the
usual `deskmail deadletters replay`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from services.common.errors import DeadLetterFlood


@dataclass(frozen=True)
class DeadLetterLimit:
    """Stop when more than ``percent`` % of the last ``of_last`` records were dead-lettered.

    ``percent`` 100 never stops. The count is over a sliding window that starts
    empty at every start of the stage, so each restart dead-letters at most
    ``percent`` % of ``of_last`` records before it stops again.
    """

    percent: float = 50.0
    of_last: int = 100

    @property
    def allowed(self) -> int:
        """Dead letters the window may hold without stopping."""
        return int(self.of_last * self.percent / 100)


class DeadLetterWindow:
    def __init__(self, limit: DeadLetterLimit, stage: str):
        self.limit = limit
        self.stage = stage
        self._last: deque[bool] = deque(maxlen=max(1, limit.of_last))
        self._dead = 0

    def check(self, dead: bool) -> None:
        """Count one finished record; raises ``DeadLetterFlood`` (and counts
        nothing) when a dead letter would take the window over the limit."""
        evicted = self._last[0] if len(self._last) == self._last.maxlen else False
        if dead and self._dead - int(evicted) + 1 > self.limit.allowed:
            raise DeadLetterFlood(
                f"stage {self.stage} dead-lettered more than {self.limit.percent:g}% of its last "
                f"{self.limit.of_last} records; stopping instead of dead-lettering the rest of its input "
                f"(see `deskmail deadletters list --stage {self.stage}`)"
            )
        self._dead += int(dead) - int(evicted)
        self._last.append(dead)
