"""Render tests of deploy/helm/contextiq: what every install must get right, for the default
values and each ci/*-values.yaml (the inputs `make helm-check` lints and validates)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import SERVICES_BY_ADDRESS_VAR
from tests.helm.conftest import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    REPO,
    Manifest,
    Renderer,
    by_name,
    kinds,
    load_yaml,
)

FULLNAME = f"{RELEASE}-contextiq"
GRPC_HEALTH = {
    "sessions": "contextiq.sessions.v1.SessionService",
    "memory": "contextiq.memory.v1.MemoryService",
    "extraction": "contextiq.extraction.v1.ExtractionService",
}
MODULES = {
    "sessions": "sessions_svc",
    "memory": "memory_svc",
    "extraction": "extraction_svc",
    "gateway": "gateway",
}
RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
PER_COMPONENT_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
PRODUCTION = CHART / "ci" / "production-values.yaml"
EXISTING = CHART / "ci" / "existing-secret-values.yaml"
VARIANTS = [pytest.param((), id="default")] + [
    pytest.param((path,), id=path.name.removesuffix("-values.yaml")) for path in CI_VALUES
]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]
    if workload["kind"] == "Pod":
        return spec
    template: dict[str, Any] = spec["template"]
    return template["spec"]  # type: ignore[no-any-return]


def containers(workload: Manifest) -> list[dict[str, Any]]:
    return pod_spec(workload)["containers"]  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def component(manifest: Manifest) -> str:
    return manifest["metadata"]["labels"]["app.kubernetes.io/component"]  # type: ignore[no-any-return]


def values_of(files: tuple[Path, ...]) -> dict[str, Any]:
    merged: dict[str, Any] = load_yaml((CHART / "values.yaml").read_text())
    for file in files:
        deep_merge(merged, load_yaml(file.read_text()))
    return merged


def deep_merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


# --- every variant -----------------------------------------------------------------------


@pytest.mark.parametrize("files", VARIANTS)
def test_every_resource_carries_the_recommended_labels(
    renderer: Renderer, files: tuple[Path, ...]
) -> None:
    for manifest in renderer.render(files=files):
        labels = manifest["metadata"]["labels"]
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        for label in RECOMMENDED:
            assert labels.get(label), f"{where} lacks {label}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "contextiq"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if manifest["kind"] in PER_COMPONENT_KINDS | {"Job", "Pod"}:
            assert labels.get("app.kubernetes.io/component"), f"{where} lacks its component"


@pytest.mark.parametrize("files", VARIANTS)
def test_deployments_have_native_grpc_or_http_probes(
    renderer: Renderer, files: tuple[Path, ...]
) -> None:
    manifests = renderer.render(files=files)
    deployments = kinds(manifests, "Deployment")
    assert {component(d) for d in deployments} >= set(GRPC_HEALTH)
    for deployment in deployments:
        name = component(deployment)
        (container,) = containers(deployment)
        assert container["command"] == ["python", "-m", MODULES[name]]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if name in GRPC_HEALTH:
            for probe in ("startupProbe", "readinessProbe"):
                assert container[probe]["grpc"] == {
                    "port": ports["grpc"],
                    "service": GRPC_HEALTH[name],
                }, probe
            # Liveness asks about the whole process, which a Postgres outage does not fail.
            assert container["livenessProbe"]["grpc"] == {"port": ports["grpc"], "service": ""}
        else:
            assert name == "gateway"
            assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
            assert container["livenessProbe"]["httpGet"]["port"] == "http"
            assert container["livenessProbe"]["httpGet"]["path"] != "/health"
            assert "startupProbe" in container
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["periodSeconds"] >= 1


@pytest.mark.parametrize("files", VARIANTS)
def test_pods_run_non_root_read_only_without_capabilities(
    renderer: Renderer, files: tuple[Path, ...]
) -> None:
    manifests = renderer.render(files=files)
    workloads = [m for m in manifests if m["kind"] in ("Deployment", "Job", "Pod")]
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        if workload["kind"] != "Pod":
            (container,) = spec["containers"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where


@pytest.mark.parametrize("files", VARIANTS)
def test_every_container_has_requests_and_limits(
    renderer: Renderer, files: tuple[Path, ...]
) -> None:
    for workload in renderer.render(files=files):
        if workload["kind"] not in ("Deployment", "Job", "Pod"):
            continue
        for container in containers(workload):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (
                    workload["metadata"]["name"],
                    kind,
                )


@pytest.mark.parametrize("files", VARIANTS)
def test_services_select_their_deployments_pods(
    renderer: Renderer, files: tuple[Path, ...]
) -> None:
    manifests = renderer.render(files=files)
    deployments = by_name(manifests, "Deployment")
    services = by_name(manifests, "Service")
    assert set(services) == set(deployments)
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert services[name]["spec"]["selector"] == selector
        (container,) = containers(deployment)
        container_ports = {p["name"] for p in container["ports"]}
        service_ports = services[name]["spec"]["ports"]
        assert {port["targetPort"] for port in service_ports} == container_ports
        # gRPC components also expose their Prometheus /metrics port; the gateway serves
        # /metrics on its HTTP port.
        assert container_ports in ({"grpc", "metrics"}, {"http"})


@pytest.mark.parametrize("files", VARIANTS)
def test_configmap_points_every_service_at_its_service_and_holds_no_secret(
    renderer: Renderer, files: tuple[Path, ...]
) -> None:
    manifests = renderer.render(files=files)
    (configmap,) = kinds(manifests, "ConfigMap")
    data = configmap["data"]
    services = by_name(manifests, "Service")
    for variable in SERVICES_BY_ADDRESS_VAR:
        host, port = data[variable].rsplit(":", 1)
        service_name, namespace, svc = host.split(".")
        assert (namespace, svc) == (NAMESPACE, "svc")
        assert services[service_name]["spec"]["ports"][0]["port"] == int(port)
    for forbidden in (
        "DATABASE_URL",
        "CONTEXTIQ_JWT_SECRET",
        "CONTEXTIQ_BOOTSTRAP_API_KEY",
        "OPENAI_API_KEY",
    ):
        assert forbidden not in data
    assert all(isinstance(value, str) for value in data.values())
    assert data["CONTEXTIQ_GRPC_ENGINE"] == "native"


@pytest.mark.parametrize("files", VARIANTS)
def test_secret_variables_come_from_secret_key_refs_only(
    renderer: Renderer, files: tuple[Path, ...]
) -> None:
    manifests = renderer.render(files=files)
    secret_like = re.compile(r"DATABASE_URL|JWT_SECRET|API_KEY|NATS_URL")
    for workload in manifests:
        if workload["kind"] not in ("Deployment", "Job"):
            continue
        for container in containers(workload):
            for name, entry in env_of(container).items():
                if secret_like.search(name):
                    assert "value" not in entry, (workload["metadata"]["name"], name)
                    assert "secretKeyRef" in entry["valueFrom"], (
                        workload["metadata"]["name"],
                        name,
                    )


def test_every_configmap_setting_is_one_the_code_reads(renderer: Renderer) -> None:
    sources = "".join(
        (REPO / path).read_text() for path in ("ciq_runtime/settings.py", "gateway/settings.py")
    )
    (configmap,) = kinds(renderer.render(files=(PRODUCTION,)), "ConfigMap")
    ours = [k for k in configmap["data"] if k.startswith("CONTEXTIQ_") or k.endswith("_URL")]
    unread = [k for k in ours if f'"{k}"' not in sources]
    assert unread == []


# --- secrets -----------------------------------------------------------------------------


def test_no_secret_value_lands_outside_a_secret(renderer: Renderer) -> None:
    values = values_of((PRODUCTION,))
    secrets = [
        values["postgres"]["url"],
        "pg-Pa55word-never-in-configmap",
        values["secrets"]["jwtSecret"],
        values["secrets"]["bootstrapApiKey"],
        *values["secrets"]["llmApiKeys"].values(),
    ]
    manifests = renderer.render(files=(PRODUCTION,))
    for manifest in manifests:
        if manifest["kind"] == "Secret":
            continue
        text = json.dumps(manifest)
        for secret in secrets:
            assert secret not in text, f"{manifest['kind']}/{manifest['metadata']['name']}"
    chart_secret = by_name(manifests, "Secret")["ciq"]
    decoded = {k: base64.b64decode(v).decode() for k, v in chart_secret["data"].items()}
    assert decoded == {
        "DATABASE_URL": values["postgres"]["url"],
        "CONTEXTIQ_JWT_SECRET": values["secrets"]["jwtSecret"],
        "CONTEXTIQ_BOOTSTRAP_API_KEY": values["secrets"]["bootstrapApiKey"],
        **values["secrets"]["llmApiKeys"],
    }


def test_a_default_install_generates_the_jwt_secret_the_worker_signs_with(
    renderer: Renderer,
) -> None:
    # The extraction worker mints per-tenant service tokens with CONTEXTIQ_JWT_SECRET and
    # refuses to start without one: a default install must not crash-loop it.
    manifests = renderer.render()
    chart_secrets = [s for s in kinds(manifests, "Secret") if "CONTEXTIQ_JWT_SECRET" in s["data"]]
    assert len(chart_secrets) == 1
    generated = base64.b64decode(chart_secrets[0]["data"]["CONTEXTIQ_JWT_SECRET"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", generated)
    for deployment in kinds(manifests, "Deployment"):
        if component(deployment) == "gateway":
            continue
        (container,) = containers(deployment)
        ref = env_of(container)["CONTEXTIQ_JWT_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": chart_secrets[0]["metadata"]["name"], "key": "CONTEXTIQ_JWT_SECRET"}


def test_each_component_gets_only_the_secrets_it_needs(renderer: Renderer) -> None:
    manifests = renderer.render(files=(PRODUCTION,))
    refs: dict[str, set[str]] = {}
    for deployment in kinds(manifests, "Deployment"):
        (container,) = containers(deployment)
        refs[component(deployment)] = {
            name
            for name, entry in env_of(container).items()
            if entry.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "ciq"
        }
    common = {"DATABASE_URL", "CONTEXTIQ_JWT_SECRET"}
    llm = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    assert refs == {
        "sessions": common | {"CONTEXTIQ_BOOTSTRAP_API_KEY"},
        "memory": common | llm,
        "extraction": common | llm,
        "gateway": set(),
    }


def test_existing_secret_mode_renders_no_secret(renderer: Renderer) -> None:
    manifests = renderer.render(files=(EXISTING,))
    assert kinds(manifests, "Secret") == []
    deployments = {component(d): containers(d)[0] for d in kinds(manifests, "Deployment")}
    sessions = env_of(deployments["sessions"])
    assert sessions["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "contextiq-postgres",
        "key": "uri",
    }
    assert sessions["NATS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "contextiq-nats",
        "key": "url",
    }
    assert sessions["CONTEXTIQ_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "contextiq-credentials",
        "key": "jwt",
        "optional": True,
    }
    assert sessions["CONTEXTIQ_BOOTSTRAP_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == (
        "bootstrap-key"
    )
    extraction = env_of(deployments["extraction"])
    assert extraction["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "contextiq-credentials",
        "key": "OPENAI_API_KEY",
    }
    (configmap,) = kinds(manifests, "ConfigMap")
    assert "NATS_URL" not in configmap["data"]
    (job,) = kinds(manifests, "Job")
    assert env_of(containers(job)[0])["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "contextiq-postgres",
        "key": "uri",
    }


def test_database_url_comes_from_the_existing_credentials_secret_by_default(
    renderer: Renderer,
) -> None:
    manifests = renderer.render({"secrets": {"existingSecret": "creds"}})
    assert kinds(manifests, "Secret") == []
    for workload in kinds(manifests, "Deployment") + kinds(manifests, "Job"):
        for container in containers(workload):
            ref = env_of(container).get("DATABASE_URL")
            if ref is not None:
                assert ref["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": "DATABASE_URL"}


def test_missing_postgres_url_fails_with_a_clear_message(renderer: Renderer) -> None:
    done = renderer.run({"postgres": {"url": ""}})
    assert done.returncode != 0
    assert "set postgres.url or postgres.existingSecret" in done.stderr


# --- toggles -----------------------------------------------------------------------------


def test_hpa_and_pdb_can_be_switched_off_per_component(renderer: Renderer) -> None:
    everything_on = {
        name: {"autoscaling": {"enabled": True}, "podDisruptionBudget": {"enabled": True}}
        for name in MODULES
    }
    on = renderer.render(everything_on)
    assert {component(m) for m in kinds(on, "HorizontalPodAutoscaler")} == set(MODULES)
    assert {component(m) for m in kinds(on, "PodDisruptionBudget")} == set(MODULES)
    for deployment in kinds(on, "Deployment"):
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    for hpa in kinds(on, "HorizontalPodAutoscaler"):
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": hpa["metadata"]["name"],
        }

    off = renderer.render(
        {
            name: {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False}}
            for name in MODULES
        }
    )
    assert kinds(off, "HorizontalPodAutoscaler") == []
    assert kinds(off, "PodDisruptionBudget") == []
    for deployment in kinds(off, "Deployment"):
        assert deployment["spec"]["replicas"] >= 1

    only_memory = renderer.render({"memory": {"podDisruptionBudget": {"enabled": False}}})
    assert "memory" not in {component(m) for m in kinds(only_memory, "PodDisruptionBudget")}
    assert "sessions" in {component(m) for m in kinds(only_memory, "PodDisruptionBudget")}


def test_pdb_uses_min_available_when_set_else_max_unavailable(renderer: Renderer) -> None:
    manifests = renderer.render({"sessions": {"podDisruptionBudget": {"minAvailable": "50%"}}})
    pdbs = {component(m): m["spec"] for m in kinds(manifests, "PodDisruptionBudget")}
    assert pdbs["sessions"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in pdbs["sessions"]
    assert pdbs["memory"]["maxUnavailable"] == 1
    for pdb in kinds(manifests, "PodDisruptionBudget"):
        assert pdb["apiVersion"] == "policy/v1"


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(renderer: Renderer) -> None:
    manifests = renderer.render()
    (job,) = kinds(manifests, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = containers(job)
    assert container["command"] == ["python", "-m", "ciq_runtime.migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    # Pre-install, the chart's own Secret does not exist yet: the Job reads a hook Secret
    # created just before it (lower weight), whose only key is DATABASE_URL.
    ref = env_of(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    hook_secret = by_name(manifests, "Secret")[ref["name"]]
    hook_annotations = hook_secret["metadata"]["annotations"]
    assert hook_annotations["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(hook_annotations["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert set(hook_secret["data"]) == {"DATABASE_URL"}
    # Nor does the chart's ServiceAccount.
    assert "serviceAccountName" not in pod_spec(job)

    disabled = renderer.render({"migrations": {"enabled": False}})
    assert kinds(disabled, "Job") == []
    assert set(by_name(disabled, "Secret")) == {FULLNAME}


def test_service_monitor_is_optional_and_scrapes_every_component(renderer: Renderer) -> None:
    assert kinds(renderer.render(), "ServiceMonitor") == []
    manifests = renderer.render(files=(PRODUCTION,))
    (monitor,) = kinds(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert set(endpoints) == {"http", "metrics"}
    assert {e["path"] for e in endpoints.values()} == {"/metrics"}
    (configmap,) = kinds(manifests, "ConfigMap")
    deployments = by_name(manifests, "Deployment")
    services = by_name(manifests, "Service")
    assert set(services) == {f"ciq-{c}" for c in ("sessions", "memory", "extraction", "gateway")}
    for name, service in services.items():
        # Selected by the monitor, and exposing exactly one of its endpoints' ports.
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        scraped = {p["name"] for p in service["spec"]["ports"]} & set(endpoints)
        assert len(scraped) == 1
        if scraped == {"metrics"}:
            # The port the process serves /metrics on (CONTEXTIQ_METRICS_PORT).
            (container,) = containers(deployments[name])
            (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
            assert str(port["containerPort"]) == configmap["data"]["CONTEXTIQ_METRICS_PORT"]


def test_gateway_can_be_left_out(renderer: Renderer) -> None:
    manifests = renderer.render(
        {"gateway": {"enabled": False}, "serviceMonitor": {"enabled": True}}
    )
    names = {m["metadata"]["name"] for m in manifests}
    assert not any(name.endswith("-gateway") for name in names)
    # The services' and the worker's /metrics are still scraped.
    (monitor,) = kinds(manifests, "ServiceMonitor")
    assert "metrics" in {e["port"] for e in monitor["spec"]["endpoints"]}


def test_image_digest_wins_over_the_tag(renderer: Renderer) -> None:
    values = values_of((PRODUCTION,))
    manifests = renderer.render(files=(PRODUCTION,))
    expected = f"{values['image']['repository']}@{values['image']['digest']}"
    for workload in manifests:
        if workload["kind"] in ("Deployment", "Job", "Pod"):
            assert {c["image"] for c in containers(workload)} == {expected}


def test_config_changes_roll_the_pods(renderer: Renderer) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        (deployment,) = [
            d for d in kinds(renderer.render(values), "Deployment") if component(d) == "memory"
        ]
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    base = checksums({})
    assert base.keys() == {"checksum/config", "checksum/secret"}
    assert (
        checksums({"config": {"logLevel": "DEBUG"}})["checksum/config"] != (base["checksum/config"])
    )
    assert (
        checksums({"secrets": {"jwtSecret": "x"}})["checksum/secret"] != (base["checksum/secret"])
    )


# --- values and schema -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sessions": {"replicaCount": "two"}}, "/sessions/replicaCount"),
        ({"gateway": {"service": {"port": 0}}}, "/gateway/service/port"),
        ({"memory": {"autoscaling": {"enabled": "yes"}}}, "/memory/autoscaling/enabled"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"config": {"logLevel": "LOUD"}}, "/config/logLevel"),
        ({"config": {"grpcEngine": "tonic"}}, "/config/grpcEngine"),
        ({"secrets": {"bootstrapApiKey": "not-a-ck-key"}}, "/secrets/bootstrapApiKey"),
        ({"nats": {"url": "nats://user:pass@nats:4222"}}, "/nats/url"),
        ({"postgres": {"url": "mysql://x@db/contextiq"}}, "/postgres/url"),
        ({"replicas": 3}, "replicas"),
        ({"sessions": {"replicas": 3}}, "replicas"),
    ],
)
def test_schema_rejects_wrong_values(
    renderer: Renderer, values: dict[str, Any], message: str
) -> None:
    done = renderer.run(values)
    assert done.returncode != 0
    assert "schema" in done.stderr
    assert message in done.stderr


def test_every_value_is_documented_and_typed() -> None:
    text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert leaf_paths_without_comment(text) == []
    values = load_yaml(text)
    untyped = [path for path in leaves(values) if not schema_has(schema, path)]
    assert untyped == []


def leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in leaves(value, (*path, key))]
    return [path]


def schema_has(schema: dict[str, Any], path: tuple[str, ...]) -> bool:
    node = schema
    for key in path:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        properties = node.get("properties", {})
        if key in properties:
            node = properties[key]
        else:
            # Only a free-form map (labels, resources, securityContext ...) takes any key.
            return (
                isinstance(node.get("additionalProperties"), dict)
                or (node.get("type") == "object" and "properties" not in node)
                or node.get("additionalProperties") is True
            )
    return "type" in node or "$ref" in node or "oneOf" in node


def leaf_paths_without_comment(text: str) -> list[str]:
    """Keys holding a value (not a mapping of documented keys) with no comment above them,
    unless a parent key carries a `# --` comment (then it documents its whole block)."""
    missing: list[str] = []
    documented_at: list[int] = []  # indents of open blocks that are documented as a whole
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):( *)(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        documented_at = [i for i in documented_at if i < indent]
        comment = []
        for previous in reversed(lines[:number]):
            if not previous.strip().startswith("#"):
                break
            comment.append(previous.strip())
        has_comment = bool(comment)
        if any(c.startswith("# --") for c in comment):
            documented_at.append(indent)
        is_block = match.group(4) == ""
        if not is_block and not has_comment and not documented_at:
            missing.append(f"line {number + 1}: {line.strip()}")
    return missing
