"""Each worker's gRPC server: a grpc.aio server on the worker's own event loop (uvloop), bound
to GRPC_PORT with SO_REUSEPORT so the kernel spreads new connections over the workers, started
and stopped with the app through ASGI lifespan events. So the master needs no part in it: a
SIGTERM drains it with HTTP (in-flight RPCs finish within GRACEFUL_TIMEOUT), a reload's new
workers bind beside the old ones before those drain, and a killed worker's replacement binds
again. It serves the inference service (serve/grpc_service.py) and grpc.health.v1.Health.

Its transport limits restate REST's for HTTP/2 (server_options): a message over MAX_BODY_BYTES
is refused before it is read; a connection must finish its HTTP/2 handshake within
HEADER_TIMEOUT; one idle for KEEPALIVE is closed (GOAWAY: a client's channel reconnects at its
next call); at most MAX_IN_FLIGHT streams at once on one connection; clients that ping too often
are sent away; and every connection is retired after MAX_CONNECTION_AGE_S, so long-lived
channels spread again over the workers after a reload or a replaced worker.
"""

import asyncio
import os
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serve.errors import StartupError
from serve.grpc_messages import SERVICE
from serve.grpc_service import InferenceService
from serve.listeners import children, listening_pids
from serve.settings import Settings

MAX_CONNECTION_AGE_S = 300
# A dead peer is found by the server's own ping after this much silence.
KEEPALIVE_PING_S = 60
# Client pings closer together than this on a connection with no calls are strikes; the second
# strike closes the connection (grpc's ENHANCE_YOUR_CALM).
MIN_CLIENT_PING_S = 10
# A hard cap: grpc's max_metadata_size alone refuses metadata between it and 1.25 times it only
# at random, so the absolute limit is set to the same value.
MAX_METADATA_BYTES = 16 * 1024
SIBLING_POLL_S = 0.05


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.limits.max_body_bytes),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.max_concurrent_streams", settings.max_in_flight),
        ("grpc.server_handshake_timeout_ms", settings.header_timeout * 1000),
        ("grpc.max_connection_idle_ms", settings.keepalive * 1000),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_S * 1000),
        ("grpc.max_connection_age_grace_ms", settings.graceful_timeout * 1000),
        ("grpc.keepalive_time_ms", KEEPALIVE_PING_S * 1000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_S * 1000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """ASGI lifespan middleware (Falcon calls process_startup and process_shutdown): this
    worker's gRPC server, serving while the app does. Health answers SERVING only when every
    model is ready in this worker, NOT_SERVING from the moment it stops."""

    def __init__(self, service: InferenceService, ready: bool, settings: Settings, master: int):
        self._service = service
        self._master = master  # whose other children are the workers serving gRPC beside this
        self._ready = ready
        self._settings = settings
        self._address = address(settings.host, settings.grpc_port)
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None

    async def process_startup(self, scope: dict, event: dict) -> None:
        server = grpc.aio.server(options=server_options(self._settings))
        server.add_generic_rpc_handlers((self._service.handler(),))
        checks = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        status = health_pb2.HealthCheckResponse.NOT_SERVING
        if self._ready:
            status = health_pb2.HealthCheckResponse.SERVING
        for name in ("", SERVICE):
            await checks.set(name, status)
        try:
            server.add_insecure_port(self._address)
        except RuntimeError as exc:
            raise StartupError(f"GRPC_PORT: cannot listen on {self._address}: {exc}") from None
        await server.start()
        self._server, self._health = server, checks

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        if self._server is None or self._health is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._until_siblings_listen(self._settings.graceful_timeout)
        await self._server.stop(self._settings.graceful_timeout)

    async def _until_siblings_listen(self, seconds: float) -> None:
        """A reload's old worker keeps taking gRPC connections until the new workers listen.

        HTTP's socket is the master's, so new connections queue there between a reload's old
        workers and its new ones; each gRPC socket is a worker's own, and gunicorn stops the old
        workers as it forks the new ones, which then load their models: with no wait, nobody
        would listen on GRPC_PORT for that while. So this worker stops listening only once every
        other worker of its master listens (at a stop or a scale-down they all do already).
        """
        port, me, master = self._settings.grpc_port, os.getpid(), self._master
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            siblings = [pid for pid in children(master) if pid != me]
            if len(listening_pids(port, siblings)) == len(siblings):
                return
            await asyncio.sleep(SIBLING_POLL_S)
