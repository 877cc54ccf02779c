"""gunicorn's own ASGI worker (uvloop, the gunicorn-h1c C parser), with what it does not offer
as settings:

- a new connection must send its first request head within HEADER_TIMEOUT (gunicorn times out
  only the wait between two requests, with `keepalive`), so silent and slow-header connections
  are closed instead of kept forever;
- a SIGTERM that arrives while the worker boots stops it (gunicorn would miss it), and on
  SIGTERM idle keep-alive connections close at once instead of after `keepalive` (a connection
  not yet past its first request is served, not closed);
- the answers gunicorn writes itself, before the app runs (malformed request line, headers or
  chunked framing: 400, 414, 431, 501), are JSON like every other answer, and a request whose
  body stops arriving before the app has seen any of it is answered 408, not 500;
- the listen backlog it is configured with, and the C parser it finds (both lost on the way in
  gunicorn 27.0.1's asyncio worker);
- up to ACCEPTS_PER_TURN new connections accepted at each turn of the event loop under a burst,
  not one, so a burst of new connections is not served seconds late, and one a turn otherwise,
  so a few clients' connections spread over the workers (ListeningServers).

It subclasses gunicorn's ASGIProtocol (pinned gunicorn version; the suite's hostile-client tests
cover each behaviour) and makes the worker build connections with it. The private gunicorn names
it and serve/__main__.py rely on are listed in PRIVATE_NAMES and checked before the server starts
(`python -m serve.check`): a gunicorn that lacks one is refused in one line, not found out at the
first connection.
"""

import asyncio
import inspect
import signal
import socket
import weakref
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, ClassVar

import gunicorn
import msgspec
import uvloop
from gunicorn.arbiter import Arbiter
from gunicorn.asgi import protocol
from gunicorn.workers import gasgi

from serve.errors import StartupError
from serve.settings import Settings

_encoder = msgspec.json.Encoder()
# Connections a worker accepts at most per turn of its event loop (see ListeningServers): a
# burst of 256 is in within a few turns, for 31 more descriptors per worker. Only from WIDEN_AT
# open connections on, and until fewer than NARROW_AT remain: below, one per turn, so that a
# few clients' connections spread over the workers (8 new connections on 2 workers, 20 tries:
# with 32 a turn from the first, all 8 on one worker 4 times and 4 on each twice; with one a
# turn, never all on one and 4 on each 13 times).
ACCEPTS_PER_TURN = 32
WIDEN_AT, NARROW_AT = 16, 4
NARROW_CHECK_SECONDS = 0.1  # how often a widened worker looks whether the burst is over


class CrystalProtocol(protocol.ASGIProtocol):
    header_timeout: float = 5.0

    @classmethod
    def _check_h1c_protocol_available(cls) -> bool:
        # gunicorn caches this answer on the class it is asked of, but reads it back from
        # ASGIProtocol: asked of a subclass, it would fall back to the pure-Python parser.
        return protocol.ASGIProtocol._check_h1c_protocol_available()

    connections: ClassVar["weakref.WeakSet[CrystalProtocol]"] = weakref.WeakSet()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)  # not left to the garbage collector: counted as open
        super().connection_lost(exc)

    def close_if_idle(self) -> None:
        """On shutdown: a kept-alive connection waiting for its next request is closed now, as its
        keep-alive timeout would; one with a request in progress finishes it first. So does one
        accepted but before its first request: its client was given the connection and sends a
        request on it (or gets HEADER_TIMEOUT's 408), where closing it answered nothing."""
        if self._awaiting_request and self.req_count > 1 and not self._closed:
            self._keepalive_timeout()

    def _start_http1(self, buffered: bytes = b"") -> None:
        super()._start_http1(buffered)
        # Held in the keep-alive timer's place: the connection loop cancels it once a request
        # head is complete, and arms the keep-alive timer itself between requests.
        self._keepalive_handle = self.worker.loop.call_later(
            self.header_timeout, self._head_timeout
        )

    def _head_timeout(self) -> None:
        self._send_error_response(408, f"no complete request head within {self.header_timeout:g} s")
        self._keepalive_timeout()

    def _send_error_response(
        self, status: int, message: str, extra_headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        receiver = self._body_receiver
        if status == 500 and receiver is not None and receiver._body_wait_expired:
            status, message = 408, "the request body stopped before its end"
        title = reason_phrase(status)
        body = _encoder.encode({"title": title, "description": message[:200]})
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        head = (
            f"HTTP/1.1 {status} {title}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{extra}"
            "Connection: close\r\n\r\n"
        )
        self._safe_write(head.encode("latin-1") + body)


def reason_phrase(status: int) -> str:
    """The reason phrase gunicorn's own _send_error_response writes: its table first, as
    HTTPStatus phrases change between Python versions (414 is "Request-URI Too Long" before
    3.13, "URI Too Long" in gunicorn's table)."""
    reason = protocol._REASON_PHRASES.get(status)
    if reason is not None:
        return reason
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ListeningServers(asyncio.AbstractServer):
    """uvloop servers sharing one listening socket, each through its own descriptor: one while
    the worker holds few connections, ACCEPTS_PER_TURN from WIDEN_AT on.

    uvloop's server (libuv 1.52) accepts one connection each time its socket polls readable,
    that is one per turn of the event loop: under load a burst of new connections waited in
    the kernel's accept queue, a loop turn (a few milliseconds) each, and the last of 256 got
    its first answer seconds late. Several servers on duplicates of the socket accept that many
    per turn, each connection set up by uvloop exactly as before. (Accepting in a reader callback
    instead and handing each socket to `connect_accepted_socket` drained the queue at once, but
    cost every new connection another loop turn: readiness probes, a new connection each, were
    answered 1.5 times slower while large batches computed.) But a worker that takes many per
    turn takes a handful of new connections all at once, before the other workers wake: so the
    extra servers are made only once a burst is under way, and closed when it is over.
    """

    def __init__(
        self,
        make: Callable[[socket.socket], Awaitable[asyncio.AbstractServer]],
        sock: socket.socket,
        open_connections: Callable[[], int],
    ):
        self._make = make  # a uvloop server accepting on the given descriptor
        self._sock = sock  # the listening socket, duplicated for each extra server
        self._open_connections = open_connections
        self._servers: list[asyncio.AbstractServer] = []
        self._widening: asyncio.Task | None = None
        self._closed = False

    async def listen(self) -> None:
        self._servers.append(await self._make(self._sock))

    def connection_made(self) -> None:
        """At each new connection: the extra servers are made from WIDEN_AT open connections on
        (then closed once fewer than NARROW_AT remain, looked at every NARROW_CHECK_SECONDS)."""
        narrow = len(self._servers) == 1 and self._widening is None
        if narrow and self._open_connections() >= WIDEN_AT:
            self._widening = asyncio.get_running_loop().create_task(self._widen())

    async def _widen(self) -> None:
        try:
            while len(self._servers) < ACCEPTS_PER_TURN and not self._closed:
                server = await self._make(self._sock.dup())
                if self._closed:
                    server.close()
                else:
                    self._servers.append(server)
        finally:
            self._widening = None
        self.get_loop().call_later(NARROW_CHECK_SECONDS, self._narrow_when_quiet)

    def _narrow_when_quiet(self) -> None:
        """Between turns' accepts (a timer's callback): uvloop attaches a new connection to the
        server that accepted it, which must then still be open."""
        if self._closed:
            return
        if self._open_connections() >= NARROW_AT:
            self.get_loop().call_later(NARROW_CHECK_SECONDS, self._narrow_when_quiet)
            return
        for server in self._servers[1:]:
            server.close()
        del self._servers[1:]

    def close(self) -> None:
        self._closed = True
        for server in self._servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._servers[0].get_loop()

    def is_serving(self) -> bool:
        return any(server.is_serving() for server in self._servers)

    async def start_serving(self) -> None:
        for server in self._servers:
            await server.start_serving()

    async def serve_forever(self) -> None:
        await self.wait_closed()


class WorkerLoop(uvloop.Loop):
    """uvloop, with the servers gunicorn's worker makes for its listening sockets accepting up to
    ACCEPTS_PER_TURN connections each turn under a burst (ListeningServers), listening with
    gunicorn's `backlog` (2048) instead of asyncio's default of 100 (a burst of connections then
    overflowed the accept queue, and the dropped ones retried a second later)."""

    def __init__(self, backlog: int, open_connections: Callable[[], int]):
        super().__init__()
        self._backlog = backlog
        self._open_connections = open_connections

    async def create_server(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
    ) -> asyncio.AbstractServer:
        kwargs = {**kwargs, "backlog": self._backlog}
        sock = kwargs.pop("sock", None)
        if sock is None:
            return await super().create_server(protocol_factory, *args, **kwargs)

        def made() -> asyncio.BaseProtocol:
            connection = protocol_factory()
            servers.connection_made()
            return connection

        def make(listening: socket.socket) -> Awaitable[asyncio.AbstractServer]:
            return uvloop.Loop.create_server(self, made, *args, sock=listening, **kwargs)

        servers = ListeningServers(make, sock, self._open_connections)
        await servers.listen()
        return servers


class CrystalWorker(gasgi.ASGIWorker):
    def _setup_event_loop(self) -> None:
        self.loop = WorkerLoop(self.cfg.backlog, lambda: len(CrystalProtocol.connections))
        asyncio.set_event_loop(self.loop)

    def init_process(self) -> None:
        # Until gunicorn installs the worker's own handlers, SIGTERM would reach the master's
        # handler inherited through fork and be lost: a server stopped while a worker boots
        # then waited GRACEFUL_TIMEOUT for it. Here it stops the worker before it serves.
        signal.signal(signal.SIGTERM, self._stop_while_booting)
        CrystalProtocol.header_timeout = Settings.from_env().header_timeout
        gasgi.ASGIProtocol = CrystalProtocol  # the worker builds each connection from this name
        super().init_process()

    def load_wsgi(self) -> None:
        """uvloop drops a signal that arrives before its loop runs, and loading the models takes
        a while: SIGTERM meanwhile is caught here."""
        loop_handler = signal.signal(signal.SIGTERM, self._stop_while_booting)
        try:
            super().load_wsgi()
        finally:
            signal.signal(signal.SIGTERM, loop_handler)

    def _stop_while_booting(self, signum: int, frame: object) -> None:
        self.alive = False

    async def _shutdown(self) -> None:
        for connection in list(CrystalProtocol.connections):
            connection.close_if_idle()
        await super()._shutdown()


# Every private gunicorn name relied on here, in CrystalArbiter (serve/__main__.py) and in
# serve/gunicorn.conf.py: gunicorn renames them without notice, and a missing one would otherwise
# fail at the first connection or quietly drop a behaviour.
PRIVATE_NAMES: tuple[tuple[object, str], ...] = (
    (protocol, "_REASON_PHRASES"),
    (protocol.ASGIProtocol, "_check_h1c_protocol_available"),
    (protocol.ASGIProtocol, "_awaiting_request"),
    (protocol.ASGIProtocol, "req_count"),
    (protocol.ASGIProtocol, "_closed"),
    (protocol.ASGIProtocol, "_keepalive_timeout"),
    (protocol.ASGIProtocol, "_start_http1"),
    (protocol.ASGIProtocol, "_keepalive_handle"),
    (protocol.ASGIProtocol, "_send_error_response"),
    (protocol.ASGIProtocol, "_body_receiver"),
    (protocol.ASGIProtocol, "_safe_write"),
    (protocol.BodyReceiver, "_body_wait_expired"),
    (gasgi, "ASGIProtocol"),  # rebound in CrystalWorker.init_process
    (gasgi.ASGIWorker, "_setup_event_loop"),
    (gasgi.ASGIWorker, "_shutdown"),
    (gasgi.ASGIWorker, "aborted"),
    (Arbiter, "kill_worker"),
    (Arbiter, "handle_hup"),
    (Arbiter, "WORKERS"),
    (Arbiter, "LISTENERS"),
)
# The methods overridden here and in CrystalArbiter, with the signature gunicorn calls them by.
SIGNATURES: dict[tuple[object, str], str] = {
    (protocol.ASGIProtocol, "_check_h1c_protocol_available"): "()",
    (protocol.ASGIProtocol, "_start_http1"): "(self, buffered=b'')",
    (protocol.ASGIProtocol, "_send_error_response"): "(self, status, message, extra_headers=())",
    (gasgi.ASGIWorker, "_setup_event_loop"): "(self)",
    (gasgi.ASGIWorker, "_shutdown"): "(self)",
    (Arbiter, "kill_worker"): "(self, pid, sig)",
    (Arbiter, "handle_hup"): "(self)",
}


def _label(owner: object) -> str:
    """A class by its name, a module by its dotted path."""
    return getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))


def _defines(owner: object, name: str) -> bool:
    """`name` on `owner`, or for a class an instance attribute one of its constructors sets
    (ASGIProtocol._closed exists only on instances)."""
    if hasattr(owner, name):
        return True
    for klass in getattr(owner, "__mro__", ()):
        code = getattr(vars(klass).get("__init__"), "__code__", None)
        if code is not None and name in code.co_names:
            return True
    return False


def _unannotated(signature: inspect.Signature) -> str:
    """Names, kinds and defaults only: gunicorn adding type hints breaks nothing here."""
    parameters = [
        parameter.replace(annotation=inspect.Parameter.empty)
        for parameter in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def missing_private_names() -> list[str]:
    """What the installed gunicorn lacks of PRIVATE_NAMES and SIGNATURES, one entry each."""
    missing = [
        f"{_label(owner)}.{name}" for owner, name in PRIVATE_NAMES if not _defines(owner, name)
    ]
    for (owner, name), expected in SIGNATURES.items():
        method = getattr(owner, name, None)
        if method is None:
            continue  # named above
        actual = _unannotated(inspect.signature(method))
        if actual != expected:
            missing.append(f"{_label(owner)}.{name}{expected} (now {actual})")
    return missing


def check_private_names() -> None:
    """Refuses a gunicorn this worker was not ported to, naming what it lacks."""
    missing = missing_private_names()
    if missing:
        raise StartupError(
            f"gunicorn {gunicorn.__version__} lacks what serve/worker.py relies on: "
            + ", ".join(missing)
        )
