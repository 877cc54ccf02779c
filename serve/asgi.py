"""gunicorn's entry point: each worker builds its own app, and so its own onnxruntime sessions."""

from collections.abc import Awaitable, Callable
from typing import Any

from gunicorn.errors import AppImportError

from serve.app import get_app
from serve.errors import StartupError
from serve.logs import REFUSED, configure_logging

Receive = Callable[[], Awaitable[dict[str, Any]]]
ASGIApp = Callable[[dict[str, Any], Receive, Callable[..., Awaitable[None]]], Awaitable[None]]


class DeferredContinue:
    """Lets the app judge a request before its body is invited.

    Falcon asks for the first body event before it routes a request, and gunicorn answers
    `Expect: 100-continue` with `100 Continue` the first time the body is asked for: a body the
    app refuses on its head alone (a declared Content-Length over MAX_BODY_BYTES) was invited
    anyway, and the client sent it or waited out a timeout. For such requests the app gets an
    empty first event; the body is asked for, and 100 Continue sent, only when the app reads it.

    A WebSocket upgrade never reaches the app (no route speaks WebSocket, and no middleware,
    the token check included, sees one): gunicorn refuses it with 403.
    """

    def __init__(self, app: ASGIApp):
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if scope["type"] == "websocket":
            return  # no route speaks WebSocket: unaccepted, the upgrade is answered 403
        if scope["type"] == "http" and _expects_continue(scope["headers"]):
            receive = _after_an_empty_event(receive)
        await self._app(scope, receive, send)


def _expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in headers)


def _after_an_empty_event(receive: Receive) -> Receive:
    first = True

    async def deferred() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": True}
        return await receive()

    return deferred


def application() -> ASGIApp:
    """gunicorn prints an AppImportError as one line and halts the whole server."""
    configure_logging()
    try:
        return DeferredContinue(get_app())
    except StartupError as exc:
        raise AppImportError(f"{REFUSED}{exc}") from None
