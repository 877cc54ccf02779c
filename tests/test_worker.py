"""The worker class's protocol, built as gunicorn builds it for each connection."""

import logging
from types import SimpleNamespace

import gunicorn_h1c
from gunicorn.config import Config

from serve.worker import CrystalProtocol


def test_connections_are_parsed_by_the_c_parser() -> None:
    """gunicorn 27.0.1 looks the parser up on ASGIProtocol: asked of a subclass, it fell back
    to its pure-Python parser (a third of a worker's time at 1 row)."""
    worker = SimpleNamespace(cfg=Config(), log=logging.getLogger(), asgi=None, loop=None, state={})
    connection = CrystalProtocol(worker)
    connection._setup_callback_parser()
    assert isinstance(connection._callback_parser, gunicorn_h1c.H1CProtocol)
