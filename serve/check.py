"""`python -m serve.check`: build the app exactly as a worker does, then exit.

Exit 0 means the deployment can serve: every model file exists, matches its checksum, loads in
onnxruntime with the [batch, 4] input contract, and fits labels.txt. `python -m serve` runs it in
a separate process before starting gunicorn, so a broken deployment stops with one clear line and
the gunicorn master never holds an onnxruntime session.
"""

import sys

from serve.app import get_app
from serve.errors import StartupError


def main() -> int:
    try:
        get_app()
    except StartupError as exc:
        print(f"serve: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
