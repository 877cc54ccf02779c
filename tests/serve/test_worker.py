"""The worker class's protocol, built as gunicorn builds it for each connection."""

import asyncio
import json
import logging
import socket
from types import SimpleNamespace
from typing import ClassVar

import gunicorn
import gunicorn_h1c
import pytest
from gunicorn.arbiter import Arbiter
from gunicorn.asgi import protocol
from gunicorn.config import Config
from gunicorn.workers import gasgi

from serve import check
from serve.errors import StartupError
from serve.worker import CrystalProtocol, WorkerLoop, check_private_names, missing_private_names


def stand_in_connection() -> CrystalProtocol:
    """A connection as the worker builds it, without a worker or a socket."""
    worker = SimpleNamespace(cfg=Config(), log=logging.getLogger(), asgi=None, loop=None, state={})
    return CrystalProtocol(worker)


def test_connections_are_parsed_by_the_c_parser() -> None:
    """gunicorn 27.0.1 looks the parser up on ASGIProtocol: asked of a subclass, it fell back
    to its pure-Python parser (a third of a worker's time at 1 row)."""
    connection = stand_in_connection()
    connection._setup_callback_parser()
    assert isinstance(connection._callback_parser, gunicorn_h1c.H1CProtocol)


class _Counting(asyncio.Protocol):
    made: ClassVar[list[asyncio.Transport]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


def test_every_pending_connection_is_accepted_within_a_few_loop_turns() -> None:
    """uvloop's own server accepted about one connection per turn of the loop: under load the
    last of a burst of 256 new connections got its first answer seconds late."""
    loop = WorkerLoop(backlog=128)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(40)]
    _Counting.made = []
    try:
        server = loop.run_until_complete(
            loop.create_server(_Counting, sock=listener, reuse_address=True, start_serving=True)
        )
        for _ in range(4):
            loop.run_until_complete(asyncio.sleep(0))
        assert len(_Counting.made) == len(clients)
        # The transports are uvloop's own, with Nagle's algorithm off as before.
        sock = _Counting.made[0].get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        server.close()
        loop.run_until_complete(server.wait_closed())
        assert not server.is_serving()
    finally:
        for transport in _Counting.made:
            transport.close()
        for client in clients:
            client.close()
        listener.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def test_the_installed_gunicorn_has_every_private_name_the_worker_uses() -> None:
    assert missing_private_names() == []
    check_private_names()


def test_a_missing_name_is_named_with_the_gunicorn_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(protocol.ASGIProtocol, "_keepalive_timeout")
    monkeypatch.delattr(Arbiter, "WORKERS")
    assert missing_private_names() == ["ASGIProtocol._keepalive_timeout", "Arbiter.WORKERS"]
    with pytest.raises(StartupError) as refused:
        check_private_names()
    assert str(refused.value) == (
        f"gunicorn {gunicorn.__version__} lacks what serve/worker.py relies on: "
        "ASGIProtocol._keepalive_timeout, Arbiter.WORKERS"
    )


def test_an_instance_attribute_the_constructor_no_longer_sets_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ASGIProtocol._awaiting_request and the like exist only on instances: their constructor
    is what must set them."""

    def constructor(self: protocol.ASGIProtocol, worker: object) -> None:
        self._closed = False
        self._body_receiver = None
        self._keepalive_handle = None

    monkeypatch.setattr(protocol.ASGIProtocol, "__init__", constructor)
    assert missing_private_names() == ["ASGIProtocol._awaiting_request"]


def test_a_changed_signature_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Type hints alone change nothing; a parameter less does."""

    def hinted(
        self: protocol.ASGIProtocol,
        status: int,
        message: str,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        pass

    def shorter(self: protocol.ASGIProtocol, status: int, message: str) -> None:
        pass

    monkeypatch.setattr(protocol.ASGIProtocol, "_send_error_response", hinted)
    assert missing_private_names() == []
    monkeypatch.setattr(protocol.ASGIProtocol, "_send_error_response", shorter)
    assert missing_private_names() == [
        "ASGIProtocol._send_error_response(self, status, message, extra_headers=()) "
        "(now (self, status, message))"
    ]


def test_the_check_refuses_such_a_gunicorn_in_one_json_line(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """`python -m serve.check`, which `python -m serve` runs before gunicorn starts."""
    monkeypatch.delattr(gasgi.ASGIWorker, "_shutdown")
    assert check.main([]) == 2
    lines = capsysbinary.readouterr().err.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert (line["level"], line["exit_code"]) == ("error", 2)
    assert line["message"] == (
        f"cannot start: gunicorn {gunicorn.__version__} lacks what serve/worker.py relies on: "
        "ASGIWorker._shutdown"
    )


@pytest.mark.parametrize(
    ("status", "title"),
    [(414, "URI Too Long"), (431, "Request Header Fields Too Large"), (400, "Bad Request")],
)
def test_the_answers_gunicorn_writes_carry_its_own_reason_phrase(status: int, title: str) -> None:
    """Python's HTTPStatus says "Request-URI Too Long" before 3.13; gunicorn says "URI Too
    Long", in the status line and so in the JSON title."""
    connection = stand_in_connection()
    written: list[bytes] = []
    connection._safe_write = written.append
    connection._send_error_response(status, "the request line is too long")
    head, _, body = b"".join(written).partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == f"HTTP/1.1 {status} {title}".encode()
    assert json.loads(body) == {"title": title, "description": "the request line is too long"}
