"""gunicorn's entry point: each worker builds its own app, and so its own onnxruntime sessions."""

import falcon.asgi
from gunicorn.errors import AppImportError

from serve.app import get_app
from serve.errors import StartupError
from serve.logs import REFUSED, configure_logging


def application() -> falcon.asgi.App:
    """gunicorn prints an AppImportError as one line and halts the whole server."""
    configure_logging()
    try:
        return get_app()
    except StartupError as exc:
        raise AppImportError(f"{REFUSED}{exc}") from None
