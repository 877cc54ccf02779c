"""`python -m serve`: check the deployment, then run gunicorn with serve/gunicorn.conf.py."""

import subprocess
import sys
from pathlib import Path

from gunicorn.app.wsgiapp import WSGIApplication

CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"


def main() -> int:
    check = subprocess.run([sys.executable, "-m", "serve.check"], check=False)
    if check.returncode != 0:
        return check.returncode
    sys.argv = [sys.argv[0], "--config", str(CONFIG)]
    WSGIApplication("%(prog)s").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
