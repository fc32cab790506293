"""Decision lines: what the engine decided and why, one record per
decision with its evidence as fields, emitted through the
"resreap.engine.decisions" logger.  Where they go and how they look (text, JSON,
the journal, a log file) is ops/decisionlog's job."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("resreap.engine.decisions")


def decision(event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})
