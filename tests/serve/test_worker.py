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
from serve.worker import (
    ACCEPTS_PER_TURN,
    NARROW_CHECK_SECONDS,
    CrystalProtocol,
    WorkerLoop,
    check_private_names,
    missing_private_names,
)


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


def turns(loop: asyncio.AbstractEventLoop, count: int) -> None:
    for _ in range(count):
        loop.run_until_complete(asyncio.sleep(0))


# As docs/operations.md says: 32 a turn from 16 open connections on, one again below 4.
WIDEN_AT, NARROW_AT = 16, 4


def test_every_pending_connection_is_accepted_within_a_few_loop_turns() -> None:
    """uvloop's own server accepted about one connection per turn of the loop: under load the
    last of a burst of 256 new connections got its first answer seconds late. A handful are
    taken one a turn, so that the other workers take their share; a burst, up to
    ACCEPTS_PER_TURN a turn, until it is over."""
    loop = WorkerLoop(backlog=128, open_connections=lambda: len(_Counting.made))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    address = listener.getsockname()
    few = [socket.create_connection(address) for _ in range(WIDEN_AT - 1)]
    _Counting.made = []
    try:
        server = loop.run_until_complete(
            loop.create_server(_Counting, sock=listener, reuse_address=True, start_serving=True)
        )
        turns(loop, WIDEN_AT)
        assert len(_Counting.made) == len(few)
        assert len(server._servers) == 1  # a handful: one a turn
        burst = [socket.create_connection(address) for _ in range(40)]
        turns(loop, 8)
        assert len(_Counting.made) == len(few) + len(burst)
        assert len(server._servers) == ACCEPTS_PER_TURN
        # The transports are uvloop's own, with Nagle's algorithm off as before.
        sock = _Counting.made[0].get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        for keep in (NARROW_AT, NARROW_AT - 1, 0):
            for transport in _Counting.made[keep:]:
                transport.close()
            _Counting.made = _Counting.made[:keep]
            loop.run_until_complete(asyncio.sleep(NARROW_CHECK_SECONDS * 1.5))
            # The burst is over below NARROW_AT open connections: one a turn again.
            assert len(server._servers) == (ACCEPTS_PER_TURN if keep >= NARROW_AT else 1), keep
        late = socket.create_connection(address)
        turns(loop, 4)
        assert len(_Counting.made) == 1
        server.close()
        loop.run_until_complete(server.wait_closed())
        assert not server.is_serving()
    finally:
        for transport in _Counting.made:
            transport.close()
        for client in [*few, *burst, late]:
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
        self.req_count = 0

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
