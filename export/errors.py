"""Expected failures of the export; `__main__` turns each into one line and an exit code."""


class ExportError(Exception):
    """A failure the operator can fix; its message is the whole explanation."""


class OutputError(ExportError):
    """The --out folder cannot be used: not a folder, no parent, foreign files, or unwritable."""


class SourceModelError(ExportError):
    """A source model file is missing, unreadable, or not a model the service can use."""


class ParityError(ExportError):
    """An ONNX file does not reproduce its source model within tolerance."""
