"""deploy/kserve/ runs the pod of deploy/k8s/ under KServe: its two manifests use only fields that
KServe's CRDs define, the InferenceService gets the runtime and scales as hpa.yaml does, and the
pod KServe builds from them passes deploy/k8s's checks against the service and kubernetes-validate.
Each check is also run on broken copies of the manifests, which it must refuse."""

import re
from collections.abc import Callable
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from support.deploy_files import (
    DELETE,
    KSERVE_DIR,
    KUBERNETES_VERSIONS,
    POD_CHECKS,
    Change,
    Documents,
    Refusals,
    commented_tokens_file,
    manifests,
    only_container,
    pod_template,
    security_context,
    tokens_file,
)

Check = Callable[[Documents], None]

# The part of KServe's CRD schemas that the two manifests use, written out from KServe v0.20.0
# (commit 1fb781055dd1567164358233e1125142ca6ef1fe): config/crd/full/
# serving.kserve.io_clusterservingruntimes.yaml and serving.kserve.io_inferenceservices.yaml.
# Objects allow only the fields listed: kubectl applies with --validate=strict by default, so
# the API server refuses a field its CRD does not define. Add a field here, from those files,
# before a manifest uses it.


def fields(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with these fields and no others."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
INT_OR_STRING = {"type": ["integer", "string"]}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
# Both CRDs say only "metadata: object": the API server checks it as an ObjectMeta.
METADATA = fields({"name": STRING, "labels": STRING_MAP, "annotations": STRING_MAP}, ("name",))
# Items of containers and volumes are core/v1 Container and Volume (k8s.io/api v0.34 in
# KServe v0.20.0), which kubernetes-validate checks in the pod below.
CORE_V1_ITEM = {"type": "object", "required": ["name"]}


def resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """apiVersion and kind: the CRD's group, its one served version and its kind. The CRD requires
    no top-level field, but kubectl needs these and metadata.name, and KServe a spec."""
    return fields(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


CLUSTER_SERVING_RUNTIME = resource(
    "serving.kserve.io/v1alpha1",
    "ClusterServingRuntime",
    fields(
        {
            "supportedModelFormats": array(
                fields({"name": STRING, "autoSelect": BOOLEAN}, ("name",))
            ),
            "protocolVersions": array(STRING),
            "annotations": STRING_MAP,
            "containers": array(CORE_V1_ITEM),
            "volumes": array(CORE_V1_ITEM),
        },
        ("containers",),
    ),
)

# Fields of core/v1 PodSpec that the predictor inlines: they go to the pod KServe builds.
PREDICTOR_POD_FIELDS = {
    "terminationGracePeriodSeconds": INTEGER,
    "automountServiceAccountToken": BOOLEAN,
}

INFERENCE_SERVICE = resource(
    "serving.kserve.io/v1beta1",
    "InferenceService",
    fields(
        {
            "predictor": fields(
                {
                    "minReplicas": INTEGER,
                    "maxReplicas": INTEGER,
                    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                    "scaleMetricType": {"enum": ["Utilization", "Value", "AverageValue"]},
                    "scaleTarget": INTEGER,
                    "deploymentStrategy": fields(
                        {
                            "type": STRING,
                            "rollingUpdate": fields(
                                {"maxSurge": INT_OR_STRING, "maxUnavailable": INT_OR_STRING}
                            ),
                        }
                    ),
                    "model": fields(
                        {
                            "runtime": STRING,
                            "modelFormat": fields({"name": STRING}, ("name",)),
                            "protocolVersion": STRING,
                        }
                    ),
                    **PREDICTOR_POD_FIELDS,
                }
            )
        },
        ("predictor",),
    ),
)

SCHEMAS = {"ClusterServingRuntime": CLUSTER_SERVING_RUNTIME, "InferenceService": INFERENCE_SERVICE}
# KServe's webhook refuses other InferenceService names (IsvcNameFmt in
# pkg/apis/serving/v1beta1/inference_service_validation.go).
ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def kserve_pod_template(docs: Documents) -> dict[str, Any]:
    """The pod KServe builds: the runtime's containers, volumes and annotations, then the
    InferenceService's annotations and pod fields over them (MergePodSpec and buildObjectMeta
    in pkg/controller/v1beta1/inferenceservice/)."""
    runtime = docs["ClusterServingRuntime"]["spec"]
    isvc = docs["InferenceService"]
    predictor = isvc["spec"]["predictor"]
    annotations = {**runtime["annotations"], **isvc["metadata"].get("annotations", {})}
    return {
        "metadata": {"annotations": annotations},
        "spec": {
            "containers": runtime["containers"],
            "volumes": runtime["volumes"],
            **{key: value for key, value in predictor.items() if key in PREDICTOR_POD_FIELDS},
        },
    }


def container_body(template: dict[str, Any]) -> dict[str, Any]:
    """The container's fields but its name and its security context (set at pod level or not)."""
    return {
        key: value
        for key, value in only_container(template).items()
        if key not in ("name", "securityContext")
    }


def check_crd_schemas(docs: Documents) -> None:
    """Field names at each level, types, required fields and enums, as KServe's CRDs say."""
    for kind, schema in SCHEMAS.items():
        jsonschema.validate(docs[kind], schema)


def check_kserve_runs_the_model_in_the_runtime(docs: Documents) -> None:
    """KServe's webhook accepts the name, and its controller runs the predictor in the runtime
    it names only if the runtime lists the model's format and protocol, merging it into the
    runtime's container named kserve-container."""
    runtime, isvc = docs["ClusterServingRuntime"], docs["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    formats = runtime["spec"]["supportedModelFormats"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert "namespace" not in runtime["metadata"]  # cluster-scoped
    assert model["modelFormat"]["name"] in {f["name"] for f in formats}
    # The image ignores storageUri: KServe must never pick it for another onnx model.
    assert not any(f.get("autoSelect") for f in formats)
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert [c["name"] for c in runtime["spec"]["containers"]] == ["kserve-container"]
    assert ISVC_NAME.fullmatch(isvc["metadata"]["name"])


def check_scaling_follows_the_hpa(docs: Documents) -> None:
    """In Standard mode KServe makes a HorizontalPodAutoscaler from the predictor's replicas and
    metric (hpa_reconciler.go): it must be hpa.yaml's."""
    isvc = docs["InferenceService"]
    annotations = isvc["metadata"]["annotations"]
    predictor = isvc["spec"]["predictor"]
    hpa = manifests()["HorizontalPodAutoscaler"]["spec"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    assert predictor["minReplicas"] == hpa["minReplicas"]
    assert predictor["maxReplicas"] == hpa["maxReplicas"]
    target = {"type": predictor["scaleMetricType"], "averageUtilization": predictor["scaleTarget"]}
    metric = {"type": "Resource", "resource": {"name": predictor["scaleMetric"], "target": target}}
    assert hpa["metrics"] == [metric]
    # KServe's HPA has no behaviour of its own: hpa.yaml must keep to Kubernetes' default.
    assert hpa["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 300}}


def check_same_pod_as_the_deployment(docs: Documents) -> None:
    """Image, port, env, resources, probes, shutdown, security and rollout are deploy/k8s's."""
    ours, theirs = kserve_pod_template(docs), pod_template()
    assert container_body(ours) == container_body(theirs)
    assert security_context(ours) == security_context(theirs)
    assert ours["spec"]["volumes"] == theirs["spec"]["volumes"]
    for key in PREDICTOR_POD_FIELDS:
        assert ours["spec"][key] == theirs["spec"][key], key
    assert theirs["metadata"]["annotations"].items() <= ours["metadata"]["annotations"].items()
    strategy = docs["InferenceService"]["spec"]["predictor"]["deploymentStrategy"]
    assert strategy == manifests()["Deployment"]["spec"]["strategy"]


def check_prometheus_annotations_are_kept(docs: Documents) -> None:
    """KServe's pod webhook rewrites prometheus.io/port and path unless this annotation is
    "false" (metrics_aggregate_injector.go); the cluster's config may default it to "true".
    prometheus.kserve.io/port and path, where KServe's runtimes declare their metrics, say the
    same."""
    annotations = kserve_pod_template(docs)["metadata"]["annotations"]
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "false"
    for key in ("port", "path"):
        assert annotations.get(f"prometheus.kserve.io/{key}") == annotations[f"prometheus.io/{key}"]


def check_pod_with_kubernetes_validate(docs: Documents) -> None:
    """The CRDs take containers, volumes and the predictor's pod fields as core/v1 types: they
    must make a valid Pod."""
    template = kserve_pod_template(docs)
    name = docs["InferenceService"]["metadata"]["name"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **template["metadata"]},
        "spec": template["spec"],
    }
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


def on_kserve_pod(check: Callable[[dict[str, Any]], None]) -> Check:
    """A check of deploy/k8s's pod template, run on the pod KServe builds."""

    def run(docs: Documents) -> None:
        check(kserve_pod_template(docs))

    run.__name__ = check.__name__
    return run


CHECKS: list[Check] = [
    check_crd_schemas,
    check_kserve_runs_the_model_in_the_runtime,
    check_scaling_follows_the_hpa,
    check_same_pod_as_the_deployment,
    check_prometheus_annotations_are_kept,
    check_pod_with_kubernetes_validate,
    *(on_kserve_pod(check) for check in POD_CHECKS),
]

RUNTIME, ISVC = "ClusterServingRuntime", "InferenceService"
CONTAINER = ("spec", "containers", 0)
ANNOTATIONS = ("spec", "annotations")
PREDICTOR = ("spec", "predictor")
MODEL = (*PREDICTOR, "model")

# For each check, changes to one field of a manifest (a new value, or DELETE) that it must refuse.
REFUSALS = Refusals(
    KSERVE_DIR,
    CHECKS,
    {
        "check_crd_schemas": [
            (RUNTIME, ("apiVersion",), "serving.kserve.io/v1beta1"),
            (RUNTIME, ("spec", "containers"), DELETE),
            (RUNTIME, ("spec", "protocolVersion"), ["v2"]),
            (RUNTIME, ("spec", "supportedModelFormats", 0, "name"), DELETE),
            (RUNTIME, ("spec", "supportedModelFormats", 0, "autoSelect"), "no"),
            (RUNTIME, (*ANNOTATIONS, "prometheus.io/port"), 3000),
            (RUNTIME, (*CONTAINER, "name"), DELETE),
            (ISVC, ("kind",), "Deployment"),
            (ISVC, PREDICTOR, DELETE),
            (ISVC, (*PREDICTOR, "minReplica"), 3),
            (ISVC, (*PREDICTOR, "minReplicas"), "3"),
            (ISVC, (*PREDICTOR, "scaleMetric"), "gpu"),
            (ISVC, (*PREDICTOR, "deploymentStrategy", "maxSurge"), 1),
            (ISVC, (*MODEL, "modelFormat", "name"), DELETE),
            (ISVC, (*MODEL, "storageUri"), "s3://models/crystal"),
        ],
        "check_kserve_runs_the_model_in_the_runtime": [
            (RUNTIME, ("metadata", "namespace"), "default"),
            (RUNTIME, ("spec", "supportedModelFormats", 0, "autoSelect"), True),
            (RUNTIME, ("spec", "protocolVersions"), ["v1", "v2"]),
            (RUNTIME, (*CONTAINER, "name"), "crystal"),
            (ISVC, ("metadata", "name"), "Crystal"),
            (ISVC, (*MODEL, "runtime"), "kserve-mlserver"),
            (ISVC, (*MODEL, "protocolVersion"), "v1"),
            (ISVC, (*MODEL, "modelFormat", "name"), "sklearn"),
        ],
        "check_scaling_follows_the_hpa": [
            (ISVC, ("metadata", "annotations", "serving.kserve.io/deploymentMode"), "Knative"),
            (ISVC, ("metadata", "annotations", "serving.kserve.io/autoscalerClass"), "keda"),
            (ISVC, (*PREDICTOR, "minReplicas"), 1),
            (ISVC, (*PREDICTOR, "maxReplicas"), 10),
            (ISVC, (*PREDICTOR, "scaleMetric"), "memory"),
            (ISVC, (*PREDICTOR, "scaleTarget"), 80),
        ],
        "check_same_pod_as_the_deployment": [
            (RUNTIME, (*CONTAINER, "image"), "crystal-serving:0.9.0"),
            (RUNTIME, (*CONTAINER, "resources", "limits", "cpu"), "4"),
            (RUNTIME, (*CONTAINER, "readinessProbe", "periodSeconds"), 1),
            (RUNTIME, (*CONTAINER, "env", 1, "value"), "10"),
            (RUNTIME, (*CONTAINER, "securityContext", "runAsGroup"), 0),
            (RUNTIME, ("spec", "volumes", 0, "emptyDir", "sizeLimit"), "1Gi"),
            (RUNTIME, (*ANNOTATIONS, "prometheus.io/scrape"), "false"),
            (ISVC, (*PREDICTOR, "automountServiceAccountToken"), True),
            (ISVC, (*PREDICTOR, "deploymentStrategy", "rollingUpdate", "maxUnavailable"), 1),
        ],
        "check_prometheus_annotations_are_kept": [
            (RUNTIME, (*ANNOTATIONS, "serving.kserve.io/enable-prometheus-scraping"), "true"),
            (RUNTIME, (*ANNOTATIONS, "prometheus.kserve.io/port"), "8080"),
            (RUNTIME, (*ANNOTATIONS, "prometheus.kserve.io/path"), DELETE),
        ],
        "check_pod_with_kubernetes_validate": [
            (RUNTIME, (*CONTAINER, "livenessProbes"), {}),
            (RUNTIME, (*CONTAINER, "ports", 0, "containerPort"), "3000"),
            (ISVC, (*PREDICTOR, "terminationGracePeriodSeconds"), "45"),
        ],
        "check_probe_and_metrics_paths": [
            (RUNTIME, (*CONTAINER, "readinessProbe", "httpGet", "path"), "/healthz"),
            (RUNTIME, (*CONTAINER, "startupProbe", "httpGet", "path"), "/v2/health"),
            (RUNTIME, (*ANNOTATIONS, "prometheus.io/path"), "/v2/metrics"),
            (RUNTIME, (*ANNOTATIONS, "prometheus.io/port"), "3000"),
            (RUNTIME, (*CONTAINER, "readinessProbe", "httpGet", "port"), "metrics"),
            (RUNTIME, (*CONTAINER, "env", 2), {"name": "METRICS_PORT", "value": "9090"}),
        ],
        "check_port": [
            (RUNTIME, (*CONTAINER, "ports", 0, "containerPort"), 8080),
            (RUNTIME, (*CONTAINER, "ports", 2, "containerPort"), 9090),
            (RUNTIME, (*CONTAINER, "ports", 2, "name"), "prometheus"),
            (RUNTIME, (*CONTAINER, "env", 2, "value"), "9090"),
            (RUNTIME, (*CONTAINER, "env", 2), {"name": "METRICS_PORT_", "value": "8082"}),
            (ISVC, ("metadata", "annotations", "prometheus.io/port"), "9091"),
        ],
        "check_tokens_from_an_optional_secret": [
            (RUNTIME, ("spec", "volumes", 1, "secret", "optional"), False),
            (RUNTIME, ("spec", "volumes", 1, "secret", "secretName"), "tokens"),
            (RUNTIME, (*CONTAINER, "volumeMounts", 1, "readOnly"), False),
        ],
        "check_locked_down_as_the_image_user": [
            (RUNTIME, (*CONTAINER, "securityContext", "runAsUser"), 0),
            (RUNTIME, (*CONTAINER, "securityContext", "readOnlyRootFilesystem"), False),
            (RUNTIME, (*CONTAINER, "securityContext", "seccompProfile", "type"), "Unconfined"),
            (RUNTIME, (*CONTAINER, "securityContext", "capabilities", "drop"), []),
            (RUNTIME, ("spec", "volumes", 0), {"name": "tmp", "hostPath": {"path": "/tmp"}}),
            (RUNTIME, (*CONTAINER, "volumeMounts", 1, "readOnly"), DELETE),
        ],
        "check_shutdown_fits_in_the_grace_period": [
            (RUNTIME, (*CONTAINER, "lifecycle", "preStop", "exec", "command", 1), "20"),
            (ISVC, (*PREDICTOR, "terminationGracePeriodSeconds"), 30),
        ],
        "check_workers_follow_the_cpu_limit": [
            (
                RUNTIME,
                (*CONTAINER, "env", 0, "valueFrom", "resourceFieldRef", "resource"),
                "requests.cpu",
            ),
            (RUNTIME, (*CONTAINER, "resources", "limits", "memory"), DELETE),
        ],
    },
    errors=(AssertionError, jsonschema.ValidationError),
)


def test_one_resource_of_each_kind() -> None:
    assert sorted(manifests(KSERVE_DIR)) == sorted(SCHEMAS)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_manifests_pass(check: Check) -> None:
    check(manifests(KSERVE_DIR))


@pytest.mark.parametrize(("name", "change"), REFUSALS.params())
def test_broken_manifests_fail(name: str, change: Change | None) -> None:
    REFUSALS.assert_refused(name, change)


def test_the_commented_tokens_file_is_the_mounted_secret() -> None:
    """Uncommented as the runtime says, AUTH_TOKENS_FILE names the Secret's file."""
    runtime = KSERVE_DIR / "clusterservingruntime.yaml"
    assert commented_tokens_file(runtime) == tokens_file(pod_template())
