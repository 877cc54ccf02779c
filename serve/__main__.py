"""`python -m serve`: check the deployment once, then run gunicorn with serve/gunicorn.conf.py.

The check runs in the master without onnxruntime, so that a missing or tampered model file stops
the service with one clear line before any worker starts.
"""

import sys
from pathlib import Path

from gunicorn.app.wsgiapp import WSGIApplication

from serve.errors import StartupError
from serve.labels import load_labels
from serve.manifest import read_manifest
from serve.settings import Settings

CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"


def check_deployment(settings: Settings) -> None:
    for model_file in read_manifest(settings.models_dir):
        model_file.read_verified()
    load_labels(settings.labels_file)


def main() -> int:
    try:
        check_deployment(Settings.from_env())
    except StartupError as exc:
        print(f"serve: cannot start: {exc}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], "--config", str(CONFIG)]
    WSGIApplication("%(prog)s").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
