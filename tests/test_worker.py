"""The worker class's protocol, built as gunicorn builds it for each connection."""

import asyncio
import logging
import socket
from types import SimpleNamespace
from typing import ClassVar

import gunicorn_h1c
from gunicorn.config import Config

from serve.worker import CrystalProtocol, WorkerLoop


def test_connections_are_parsed_by_the_c_parser() -> None:
    """gunicorn 27.0.1 looks the parser up on ASGIProtocol: asked of a subclass, it fell back
    to its pure-Python parser (a third of a worker's time at 1 row)."""
    worker = SimpleNamespace(cfg=Config(), log=logging.getLogger(), asgi=None, loop=None, state={})
    connection = CrystalProtocol(worker)
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
