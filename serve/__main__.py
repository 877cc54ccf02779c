"""`python -m serve`: prepare the release (models verified and proven to load), then run gunicorn
with serve/gunicorn.conf.py. A SIGHUP prepares a new release from MODELS_DIR first, and reloads
the workers only when it passed; otherwise the server keeps serving the models it has.
`--check` prepares the release and stops there; `--help` lists the settings."""

import os
import signal
import sys
import textwrap
from pathlib import Path

from gunicorn.arbiter import Arbiter

from serve import release
from serve.errors import StartupError
from serve.logs import json_line, refusal
from serve.settings import SETTINGS, Settings

CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"
USAGE = "usage: python -m serve [--check | --help]"


def announce(published: release.Release) -> None:
    """One line per model: what is served, from which source, with which parity; then one line
    on who may call them (the bearer tokens, or that there are none)."""
    lines = [
        json_line(
            "info",
            "serve",
            "model",
            {
                "model": model.name,
                "version": model.version,
                "source_sha256": model.source_sha256,
                **dict(model.details),
            },
        )
        for model in published.models
    ]
    tokens = published.tokens
    if tokens is None:
        message = "bearer tokens off (AUTH_TOKENS_FILE unset): the models answer every caller"
        count = 0
    else:
        message = "bearer tokens on: the models answer requests with an accepted token"
        count = len(tokens.digests)
    lines.append(json_line("info", "serve", message, {"accepted_tokens": count}))
    sys.stdout.buffer.write(b"".join(line + b"\n" for line in lines))
    sys.stdout.flush()


class CrystalArbiter(Arbiter):
    """gunicorn's master, reloading only a release that passed, and remembering why it stopped
    each worker it stopped: the metrics count reloads and stops apart from crashes."""

    def __init__(self, app) -> None:
        super().__init__(app)
        # pid -> why this master stopped that worker ("reload", "stop" or "timeout"), until its
        # exit is counted (child_exit in serve/gunicorn.conf.py takes it out).
        self.stop_reasons: dict[int, str] = {}
        self._stopping_for = "stop"

    def handle_hup(self) -> None:
        try:
            prepared = release.prepare(Settings.from_env(), listen=False)
        except StartupError as exc:
            self.log.error("reload refused, the current models stay served: %s", exc)
            return
        release.publish(prepared)
        announce(prepared)
        # The workers gunicorn stops in there are the old ones, retired by the reload.
        self._stopping_for = "reload"
        try:
            super().handle_hup()
        finally:
            self._stopping_for = "stop"

    def kill_worker(self, pid: int, sig: int) -> None:
        """Every worker the master stops is signalled here: the old ones of a reload and the
        extra ones of a scale-down (manage_workers), all at shutdown (stop), and the ones that
        stopped reporting (murder_workers marks them aborted first). A worker's first stop
        reason is the one its exit is counted under."""
        worker = self.WORKERS.get(pid)
        stops = (signal.SIGTERM, signal.SIGQUIT, signal.SIGABRT, signal.SIGKILL)
        if worker is not None and sig in stops:  # not SIGUSR1, which only reopens log files
            self.stop_reasons.setdefault(pid, "timeout" if worker.aborted else self._stopping_for)
        super().kill_worker(pid, sig)


def help_text() -> str:
    """Usage and every setting with its default and meaning, from the one table of them."""
    lines = [
        USAGE,
        "",
        "Serves the models in MODELS_DIR over HTTP with gunicorn, configured by the environment.",
        "",
        "  --check  check the settings and prove the models exactly as a start does, then exit:",
        "           0 when the server can start, else 2 with one JSON line on stderr",
        "  --help   print this and exit",
        "",
        "settings (environment variables; a blank one counts as unset, but AUTH_TOKENS_FILE):",
    ]
    for setting in SETTINGS:
        lines.append(f"  {setting.name} (default: {setting.shown})")
        lines.append(
            textwrap.fill(setting.meaning, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    return "\n".join(lines) + "\n"


def run_gunicorn() -> None:
    """Imported only now: importing gunicorn's config parses WEB_CONCURRENCY itself, so a bad
    value must be refused by Settings first, and a blank one (unset for Settings) removed."""
    if not os.environ.get("WEB_CONCURRENCY", "1").strip():
        del os.environ["WEB_CONCURRENCY"]
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = [sys.argv[0], "--config", str(CONFIG)]
    CrystalArbiter(WSGIApplication("%(prog)s")).run()


def main(argv: list[str]) -> int:
    if argv in (["--help"], ["-h"]):
        sys.stdout.write(help_text())
        return 0
    try:
        if argv not in ([], ["--check"]):
            raise StartupError(f"arguments {' '.join(argv)!r} not understood; {USAGE}")
        release.publish(release.prepare(Settings.from_env(), listen=True))
    except StartupError as exc:
        sys.stderr.buffer.write(refusal(exc) + b"\n")
        return 2
    announce(release.current())
    if argv == ["--check"]:
        return 0
    run_gunicorn()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
