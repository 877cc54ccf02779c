"""Expected failures of the export; `__main__` turns each into one line and an exit code."""

# A library's message can hold whole arrays; the operator needs the gist, on one line.
MAX_REASON_CHARS = 200


class ExportError(Exception):
    """A failure the operator can fix; its message is the whole explanation."""


class OutputError(ExportError):
    """The --out folder cannot be used: not a folder, no parent, foreign files, or unwritable."""


class SourceModelError(ExportError):
    """A source model file is missing, unreadable, or not a model the service can use."""


class NotProbabilities(SourceModelError):
    """A model's outputs are not class probabilities: negative, above 1, or rows not summing to 1
    (a network that ends in logits, for instance)."""


class ParityError(ExportError):
    """An ONNX file does not reproduce its source model within tolerance."""


def first_line(exc: BaseException) -> str:
    """The first line of the innermost exception behind `exc` (as a traceback would show the
    chain): where a library actually failed, not the wrapper that dumped its arguments."""
    while (inner := _inner(exc)) is not None:
        exc = inner
    lines = str(exc).strip().splitlines()
    return shortened(lines[0] if lines else type(exc).__name__)


def shortened(reason: str) -> str:
    """At most MAX_REASON_CHARS of a library's reason."""
    if len(reason) > MAX_REASON_CHARS:
        return reason[: MAX_REASON_CHARS - 3] + "..."
    return reason


def _inner(exc: BaseException) -> BaseException | None:
    if exc.__cause__ is not None or exc.__suppress_context__:
        return exc.__cause__
    return exc.__context__
