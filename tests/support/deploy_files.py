"""The deployment files read for the tests: the Dockerfile as stages and instructions, the
Kubernetes manifests, and the checks of a pod template that other ways of deploying the same pod
(deploy/kserve/) share."""

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from falcon import testing

from harness.server import REPO_ROOT
from serve.app import create_app
from serve.settings import Settings

DOCKERFILE = REPO_ROOT / "Dockerfile"
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
# The oldest Kubernetes these manifests are checked against, and the newest schemas the pinned
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")


@dataclass
class Stage:
    """One FROM ... section of a Dockerfile, its instructions in order as (KEYWORD, arguments)."""

    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def read_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The Dockerfile's stages by name, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name)
        elif current is not None:
            current.instructions.append((keyword, args))
    return stages


def copy_args(args: str) -> tuple[dict[str, str], list[str], str]:
    """COPY's --flags, sources and destination."""
    words = shlex.split(args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


def env_args(args: str) -> dict[str, str]:
    """ENV KEY=VALUE KEY=VALUE ... (the only ENV form the Dockerfile uses)."""
    return dict(word.partition("=")[::2] for word in shlex.split(args))


def exec_form(args: str) -> list[str]:
    """The JSON array after CMD (or after HEALTHCHECK's options and CMD)."""
    return json.loads(args[args.index("[") :])


def runtime_stage() -> Stage:
    """The image that ships is the Dockerfile's last stage."""
    return list(read_stages().values())[-1]


def manifests() -> dict[str, dict[str, Any]]:
    documents = [
        doc
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    return {doc["kind"]: doc for doc in documents}


def pod_template() -> dict[str, Any]:
    return manifests()["Deployment"]["spec"]["template"]


def only_container(template: dict[str, Any]) -> dict[str, Any]:
    (only,) = template["spec"]["containers"]
    return only


def security_context(template: dict[str, Any]) -> dict[str, Any]:
    """The container's effective settings: its own security context over the pod's."""
    pod = template["spec"].get("securityContext", {})
    return {**pod, **only_container(template)["securityContext"]}


def check_probe_and_metrics_paths(template: dict[str, Any]) -> None:
    client = testing.TestClient(create_app({}, ["blue", "green", "yellow"]))
    spec = only_container(template)
    annotations = template["metadata"]["annotations"]
    paths = {
        spec["startupProbe"]["httpGet"]["path"],
        spec["livenessProbe"]["httpGet"]["path"],
        spec["readinessProbe"]["httpGet"]["path"],
        annotations["prometheus.io/path"],
    }
    assert spec["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for path in paths:
        assert client.simulate_get(path).status_code == 200, path


def check_port(template: dict[str, Any]) -> None:
    settings = Settings.from_env({})
    port = settings.port
    container_port, grpc_port = only_container(template)["ports"]
    assert container_port["containerPort"] == port == 3000
    # gRPC's port, by the name KServe gives cleartext HTTP/2.
    assert grpc_port == {"name": "h2c", "containerPort": settings.grpc_port, "protocol": "TCP"}
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == port


def check_locked_down_as_the_image_user(template: dict[str, Any]) -> None:
    security = security_context(template)
    assert security["runAsNonRoot"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    (user,) = runtime_stage().args("USER")
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"
    # With a read-only root, /tmp (metrics samples, worker heartbeats) must be a volume.
    (mount,) = only_container(template)["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def check_shutdown_fits_in_the_grace_period(template: dict[str, Any]) -> None:
    """The load balancer drains during preStop, then gunicorn finishes in-flight requests."""
    spec = only_container(template)
    env = {item["name"]: item for item in spec["env"]}
    command = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    graceful = int(env["GRACEFUL_TIMEOUT"]["value"])
    assert int(command[1]) + graceful < template["spec"]["terminationGracePeriodSeconds"]


def check_workers_follow_the_cpu_limit(template: dict[str, Any]) -> None:
    spec = only_container(template)
    env = {item["name"]: item for item in spec["env"]}
    assert env["WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= spec["resources"][kind].keys()
