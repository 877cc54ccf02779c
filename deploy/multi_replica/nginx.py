"""nginx in front of the replicas: found or installed, its configuration rendered from
deploy/nginx/crystal.conf with this run's loopback ports, run in the foreground, its log read."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.server import request
from serve.settings import Settings

TEMPLATE = Path(__file__).resolve().parent.parent / "nginx" / "crystal.conf"
# nginx leaves a failed replica out this long before trying it again.
FAIL_TIMEOUT_SECONDS = 3
NGINX_ERROR = re.compile(r"\[error\] \d+#\d+: \*\d+ (?P<what>.+?) while (?P<doing>[^,]+),")


def nginx_binary() -> str:
    """nginx from PATH or Debian's /usr/sbin, installed with apt-get when missing and root."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            "multi_replica: nginx is not installed and this user cannot install it; "
            "install Debian's package first (apt-get install nginx) or put nginx on PATH"
        )
    print("installing nginx with apt-get ...", flush=True)
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=apt_env, check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
        env=apt_env,
        check=True,
    )
    return shutil.which("nginx", path="/usr/sbin:/usr/bin") or "/usr/sbin/nginx"


def render_config(ports: Sequence[int], listen_port: int, retry_posts: bool = True) -> str:
    """The template with the replicas' ports, nginx's own, and the service's MAX_BODY_BYTES as
    client_max_body_size; without `retry_posts`, nginx does not pass a failed POST on."""
    servers = "\n        ".join(
        f"server 127.0.0.1:{port} max_fails=1 fail_timeout={FAIL_TIMEOUT_SECONDS}s;"
        for port in ports
    )
    text = (
        TEMPLATE.read_text()
        .replace("{{servers}}", servers)
        .replace("{{listen}}", f"127.0.0.1:{listen_port}")
        .replace("{{max_body_bytes}}", str(Settings.from_env().limits.max_body_bytes))
    )
    if re.search(r"\{\{\w+\}\}", text):
        raise RuntimeError(f"{TEMPLATE}: a placeholder was left unfilled")
    if not retry_posts:
        if " non_idempotent;" not in text:
            raise RuntimeError(f"{TEMPLATE}: proxy_next_upstream has no non_idempotent to drop")
        text = text.replace(" non_idempotent;", ";")
    return text


@dataclass(frozen=True)
class Nginx:
    url: str
    prefix: Path

    def upstream_errors(self) -> dict[str, int]:
        """What nginx logged about the replicas, counted by kind (without ids and addresses)."""
        kinds: Counter[str] = Counter()
        for line in (self.prefix / "error.log").read_text(errors="replace").splitlines():
            found = NGINX_ERROR.search(line)
            if found:
                kinds[f"{found['what']} while {found['doing']}"] += 1
        return dict(kinds.most_common())


@contextmanager
def running_nginx(binary: str, workdir: Path, config: str) -> Iterator[Nginx]:
    """nginx in the foreground with its own prefix folder, ready when it passes a readiness
    probe on to a replica; stopped gracefully (open requests finish)."""
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
    # nginx started as root runs its workers as an unprivileged user, who must reach the prefix.
    prefix.chmod(0o755)
    (prefix / "tmp").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(config)
    listen = config.split("listen ", 1)[1].split(";", 1)[0]
    port = int(listen.rsplit(":", 1)[1])
    command = [binary, "-p", str(prefix), "-e", "error.log", "-c", str(conf), "-g", "daemon off;"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                log = (prefix / "error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited with {process.returncode}:\n{log}")
            try:
                if request(port, "GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("nginx: not ready after 10 s")
            time.sleep(0.05)
        yield Nginx(f"http://{listen}", prefix)
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
