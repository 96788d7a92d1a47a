"""Logging helpers shared by the commands."""

from __future__ import annotations

import logging


class _FirstTimeOnly(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def once_per_process(prefix: str) -> None:
    """Let each distinct message of the loggers named ``prefix`` or ``prefix.*`` (those created so far) through
    once per process: a library that warns the same thing for every model it is given (lm-eval does) says it
    once."""
    only_once = _FirstTimeOnly()
    names = [prefix] + [n for n in logging.root.manager.loggerDict if n.startswith(prefix + ".")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FirstTimeOnly) for f in logger.filters):
            logger.addFilter(only_once)
