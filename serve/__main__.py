"""`python -m serve`: prepare the release (models verified and proven to load), then run gunicorn
with serve/gunicorn.conf.py. A SIGHUP prepares a new release from MODELS_DIR first, and reloads
the workers only when it passed; otherwise the server keeps serving the models it has."""

import sys
from pathlib import Path

from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.arbiter import Arbiter

from serve import release
from serve.errors import StartupError
from serve.logs import json_line, refusal
from serve.settings import Settings

CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"


def announce(published: release.Release) -> None:
    """One line per model: what is served, from which source, with which parity."""
    for model in published.models:
        line = json_line(
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
        sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()


class CrystalArbiter(Arbiter):
    def handle_hup(self) -> None:
        try:
            prepared = release.prepare(Settings.from_env(), listen=False)
        except StartupError as exc:
            self.log.error("reload refused, the current models stay served: %s", exc)
            return
        release.publish(prepared)
        announce(prepared)
        super().handle_hup()


class CrystalApplication(WSGIApplication):
    def run(self) -> None:
        CrystalArbiter(self).run()


def main() -> int:
    try:
        release.publish(release.prepare(Settings.from_env(), listen=True))
    except StartupError as exc:
        sys.stderr.buffer.write(refusal(exc) + b"\n")
        return 2
    announce(release.current())
    sys.argv = [sys.argv[0], "--config", str(CONFIG)]
    CrystalApplication("%(prog)s").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
