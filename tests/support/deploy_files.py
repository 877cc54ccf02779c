"""The deployment files read for the tests: the Dockerfile as stages and instructions, the
Kubernetes manifests, the checks of a pod template that other ways of deploying the same pod
(deploy/kserve/) share, and broken copies of manifests for the checks to refuse."""

import copy
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from falcon import testing
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.server import REPO_ROOT
from serve.app import create_app
from serve.settings import Settings

DOCKERFILE = REPO_ROOT / "Dockerfile"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
# requirements.txt and all it pulls in, pinned with hashes: what the image and `make serve` install.
LOCK = REPO_ROOT / "requirements.lock"
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
KSERVE_DIR = REPO_ROOT / "deploy" / "kserve"
# The oldest Kubernetes these manifests are checked against, and the newest schemas the pinned
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
# The Secret whose key "tokens" holds the bearer tokens, one a line (AUTH_TOKENS_FILE).
TOKENS_SECRET = "crystal-auth-tokens"


@dataclass
class Stage:
    """One FROM ... section of a Dockerfile, its instructions in order as (KEYWORD, arguments)."""

    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def logical_lines(path: Path) -> list[str]:
    """A Dockerfile's or requirements file's lines, continuation lines joined and comments
    dropped."""
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
    return logical


def read_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The Dockerfile's stages by name."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical_lines(path):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name)
        elif current is not None:
            current.instructions.append((keyword, args))
    return stages


@dataclass
class Pin:
    """One requirement of a requirements file: its pinned version (None if not pinned with ==),
    its hashes, and the environments it is for."""

    version: str | None
    hashes: list[str]
    marker: Marker | None


def read_requirements(path: Path) -> dict[str, Pin]:
    """A requirements file without options (requirements.txt, requirements.lock) by normalized
    name."""
    entries: dict[str, Pin] = {}
    for line in logical_lines(path):
        spec, *hashes = line.split(" --hash=")
        requirement = Requirement(spec)
        pins = [pin.version for pin in requirement.specifier if pin.operator == "=="]
        version = pins[0] if len(pins) == len(requirement.specifier) == 1 else None
        name = canonicalize_name(requirement.name)
        entries[name] = Pin(version, [h.strip() for h in hashes], requirement.marker)
    return entries


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


Documents = dict[str, dict[str, Any]]


def manifests(folder: Path = K8S_DIR) -> Documents:
    """A folder's manifests by kind."""
    documents = [
        doc
        for path in sorted(folder.glob("*.yaml"))
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


def container_env(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in only_container(template)["env"]}


def container_ports(template: dict[str, Any]) -> dict[str, int]:
    """The container's ports by name."""
    return {port["name"]: port["containerPort"] for port in only_container(template)["ports"]}


def container_settings(template: dict[str, Any]) -> Settings:
    """The service's settings from the container's literal env values."""
    env = container_env(template)
    return Settings.from_env({name: item["value"] for name, item in env.items() if "value" in item})


def tokens_volume(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's one Secret volume and the container's mount of it."""
    (volume,) = [volume for volume in template["spec"]["volumes"] if "secret" in volume]
    (mount,) = [m for m in only_container(template)["volumeMounts"] if m["name"] == volume["name"]]
    return volume["secret"], mount


def tokens_file(template: dict[str, Any]) -> str:
    """Where the container finds the bearer tokens: the file of the Secret's one key."""
    secret, mount = tokens_volume(template)
    (item,) = secret["items"]
    return f"{mount['mountPath']}/{item['path']}"


def commented_tokens_file(path: Path) -> str:
    """The AUTH_TOKENS_FILE a manifest shows commented out, for tokens to be turned on."""
    (value,) = re.findall(
        r"^\s*# - name: AUTH_TOKENS_FILE\n\s*#   value: (\S+)$", path.read_text(), re.MULTILINE
    )
    return value


def check_probe_and_metrics_paths(template: dict[str, Any]) -> None:
    """In the app built with the container's settings, the probes answer on their ports and the
    scrape annotations' path on the annotated port alone."""
    settings = container_settings(template)
    client = testing.TestClient(create_app({}, ["blue", "green", "yellow"], settings=settings))
    spec = only_container(template)
    ports = container_ports(template)
    assert spec["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = spec[kind]["httpGet"]
        status = client.simulate_get(probe["path"], port=ports[probe["port"]]).status_code
        assert status == 200, kind
    annotations = template["metadata"]["annotations"]
    path, port = annotations["prometheus.io/path"], int(annotations["prometheus.io/port"])
    assert client.simulate_get(path, port=port).status_code == 200
    assert client.simulate_get(path, port=settings.port).status_code == 404


def check_port(template: dict[str, Any]) -> None:
    """The container's ports are the ones its settings listen on, and the scrape annotation
    names the metrics port."""
    settings = container_settings(template)
    assert settings.port == 3000
    assert settings.metrics_port is not None
    ports = [
        (p["name"], p["containerPort"], p["protocol"]) for p in only_container(template)["ports"]
    ]
    # KServe's Service maps the first port to 80. gRPC's port goes by the name KServe gives
    # cleartext HTTP/2.
    assert ports == [
        ("http", settings.port, "TCP"),
        ("h2c", settings.grpc_port, "TCP"),
        ("metrics", settings.metrics_port, "TCP"),
    ]
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == settings.metrics_port


def check_tokens_from_an_optional_secret(template: dict[str, Any]) -> None:
    """The bearer tokens' Secret, read-only. Optional: without it the pod starts, with an empty
    folder, and asks for no tokens while AUTH_TOKENS_FILE is unset."""
    secret, mount = tokens_volume(template)
    assert secret["secretName"] == TOKENS_SECRET
    assert secret["optional"] is True
    assert [item["key"] for item in secret["items"]] == ["tokens"]
    assert mount["readOnly"] is True


def check_locked_down_as_the_image_user(template: dict[str, Any]) -> None:
    security = security_context(template)
    assert security["runAsNonRoot"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    (user,) = runtime_stage().args("USER")
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"
    # With a read-only root, /tmp (metrics samples, worker heartbeats) must be a volume, the only
    # writable one.
    mounts = {mount["mountPath"]: mount for mount in only_container(template)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts.pop("/tmp")["name"]]
    assert all(mount.get("readOnly") is True for mount in mounts.values()), mounts


def check_shutdown_fits_in_the_grace_period(template: dict[str, Any]) -> None:
    """The load balancer drains during preStop, then gunicorn finishes in-flight requests."""
    spec = only_container(template)
    env = container_env(template)
    command = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    graceful = int(env["GRACEFUL_TIMEOUT"]["value"])
    assert int(command[1]) + graceful < template["spec"]["terminationGracePeriodSeconds"]


def check_workers_follow_the_cpu_limit(template: dict[str, Any]) -> None:
    spec = only_container(template)
    env = container_env(template)
    assert env["WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= spec["resources"][kind].keys()


# The checks of a pod template, run on deploy/k8s's Deployment and on the pod KServe builds.
POD_CHECKS: tuple[Callable[[dict[str, Any]], None], ...] = (
    check_probe_and_metrics_paths,
    check_port,
    check_tokens_from_an_optional_secret,
    check_locked_down_as_the_image_user,
    check_shutdown_fits_in_the_grace_period,
    check_workers_follow_the_cpu_limit,
)

DELETE = object()
FieldPath = tuple[str | int, ...]
# A change to one field of a manifest: its kind, the path to the field, a new value or DELETE.
Change = tuple[str, FieldPath, Any]


def broken(docs: Documents, change: Change) -> Documents:
    """A copy of the manifests with the change made."""
    kind, path, value = change
    docs = copy.deepcopy(docs)
    parent: Any = docs[kind]
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return docs


@dataclass
class Refusals:
    """Checks of a folder's manifests, and for each check the changes it must refuse."""

    folder: Path
    checks: list[Callable[[Documents], None]]
    changes: dict[str, list[Change]]
    errors: tuple[type[Exception], ...] = (AssertionError,)

    def params(self) -> list[Any]:
        """pytest parameters (check name, change), each named after its change; a check without
        changes gets one whose change is None, which fails."""
        names = [check.__name__ for check in self.checks]
        assert self.changes.keys() <= set(names), self.changes.keys() - set(names)
        return [
            pytest.param(name, change, id=f"{name}:{change[0]}." + ".".join(map(str, change[1])))
            if change
            else pytest.param(name, change, id=f"{name}:unchanged")
            for name in names
            for change in self.changes.get(name) or [None]
        ]

    def assert_refused(self, name: str, change: Change | None) -> None:
        assert change is not None, f"{name}: no broken manifests to refuse"
        check = {check.__name__: check for check in self.checks}[name]
        with pytest.raises(self.errors):
            check(broken(manifests(self.folder), change))
