"""Log lines an attacker cannot forge or flood.

Every value a client chooses (a path, a method, a header) can hold a newline or a terminal escape;
:func:`printable` escapes control characters so one request is always one log line, and
:class:`SafeFormatter` applies it to every message of the activator's loggers. :class:`RateLimited`
logs a recurring failure (file descriptors exhausted, timed-out sockets) once per interval with a
count of what it held back, instead of one traceback per event.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

__all__ = ["RateLimited", "SafeFormatter", "printable"]

# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` with every control character escaped (``\\n`` becomes ``\\x0a``): safe on one log line."""
    value = text if isinstance(text, str) else str(text)
    return _CONTROL.sub(_escape, value) if _CONTROL.search(value) else value


class SafeFormatter(logging.Formatter):
    """A formatter whose message part never spans lines; the traceback, if any, still does."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class RateLimited:
    """Log one kind of recurring failure at most once per ``interval`` seconds, counting the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, message: str, *args: Any) -> bool:
        """Log ``message % args`` under ``key`` unless it was logged within the interval; True if logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            message += f" ({held} more like it in the last {self.interval:g} s not logged)"
        self.logger.log(level, message, *args)
        return True
