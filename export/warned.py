"""What the libraries warned during an export, on one line.

torch, onnx, skl2onnx and scikit-learn warn on stderr as they go: Python warnings with source
excerpts, and log records (torch logs whole tracebacks). The export keeps them instead, Python's
warning filters as they are, and says what they were in one line: at the end of a refusal, or
after a success. Warnings that the frameworks' modules expect and explain are filtered where they
arise.
"""

import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Longest description shown of the first warning; the rest are counted.
MAX_SHOWN_CHARS = 160
# A line of a logged traceback that names an exception: `package.module.SomeError: message`.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*(\w*(?:Error|Exception)): (.+)$")


@contextmanager
def captured() -> Iterator[list[str]]:
    """The block's Python warnings and library log records, each described in one line, in the
    list once the block is done; none of them printed."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught, kept_logs() as records:
        try:
            yield notes
        finally:
            notes += [_warning(warning) for warning in caught]
            notes += [_record(record) for record in records]


@contextmanager
def kept_logs(names: Iterable[str] | None = None) -> Iterator[list[logging.LogRecord]]:
    """The records of WARNING and above that these loggers would print, kept instead.

    By default the root logger (where a library's records end up unless it set up handlers of
    its own) and every logger with handlers of its own, as torch sets up several.
    """
    if names is None:
        loggers = [logging.getLogger()] + [
            logger
            for logger in logging.root.manager.loggerDict.values()
            if isinstance(logger, logging.Logger) and logger.handlers
        ]
    else:
        loggers = [logging.getLogger(name) for name in names]
    records: list[logging.LogRecord] = []
    keep = _Keep(records)
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers = [keep]
        logger.propagate = logger is logging.getLogger() and logger.propagate
    try:
        yield records
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def logged_exception(records: list[logging.LogRecord]) -> str | None:
    """The first exception a logged traceback names, as `SomeError: message`: where a library
    logs the cause of a failure and raises a vaguer error ("check the warnings above")."""
    for record in records:
        logged = record.getMessage()
        if record.exc_info:
            logged += "\n" + logging.Formatter().formatException(record.exc_info)
        for line in logged.splitlines():
            match = _EXCEPTION_LINE.match(line.strip())
            if match:
                return f"{match[1]}: {match[2]}"
    return None


def summary(notes: list[str]) -> str:
    """'' when there are none; else how many distinct ones, and the first."""
    distinct = list(dict.fromkeys(notes))
    if not distinct:
        return ""
    shown = distinct[0]
    if len(shown) > MAX_SHOWN_CHARS:
        shown = shown[: MAX_SHOWN_CHARS - 3] + "..."
    more = f"; and {len(distinct) - 1} more" if len(distinct) > 1 else ""
    count = f"{len(distinct)} warning{'s' if len(distinct) > 1 else ''}"
    return f"{count}: {shown}{more}"


def with_summary(message: str, notes: list[str]) -> str:
    """`message`, and what was warned on the way in brackets."""
    said = summary(notes)
    return f"{message} ({said})" if said else message


def _warning(warning: warnings.WarningMessage) -> str:
    lines = str(warning.message).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{_library(warning.filename)} {warning.category.__name__}: {text}"


def _record(record: logging.LogRecord) -> str:
    lines = record.getMessage().strip().splitlines()
    text = lines[0] if lines else ""
    return f"{record.name.partition('.')[0]} {record.levelname.lower()}: {text}"


def _library(filename: str) -> str:
    """The installed package a warning came from, or the module's name."""
    parts = Path(filename).parts
    if "site-packages" in parts:
        index = parts.index("site-packages")
        if index + 1 < len(parts):
            return Path(parts[index + 1]).stem
    return Path(filename).stem
