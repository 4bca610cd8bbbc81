"""The Helm chart in deploy/helm/stillroom, rendered and linted by Helm itself, offline.

Helm runs in-process through ``helm_python`` (helm-python-sdk: Helm's Go SDK built as a C
library, shipped inside the wheel), so ``helm lint`` and ``helm template`` need neither a binary
nor a cluster. Every rendered object is validated against the Kubernetes OpenAPI schemas that
``kubernetes_validate`` ships (strict: unknown fields fail), for the oldest Kubernetes the chart
supports and the newest the package knows. Then the properties that matter to Stillroom are
checked on the objects: probes, ports, non-root, resources, the HPA target, selectors, secrets,
and that the environment the pods get is one ``load_settings`` accepts.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from proxy.settings import Settings, env_name, load_settings, settings_fields

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "stillroom"
RELEASE = "demo"
KUBE_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
# Settings the chart sets itself rather than from values.settings.
MANAGED = {"host", "port", "database", "admin_token", "upstream_api_key", "train_api_key"}

ADMIN_TOKEN = "t" * 40  # test values, not secrets
UPSTREAM_KEY = "sk-test-upstream"
DATABASE_URL = "postgresql://stillroom:pw@postgres:5432/stillroom"

CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "sqlite-persistent": {"persistence": {"enabled": True, "storageClass": "fast"}},
    "postgres-scaled": {
        "database": {"backend": "postgres", "url": DATABASE_URL},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "secrets": {"adminToken": ADMIN_TOKEN, "upstreamApiKey": UPSTREAM_KEY},
        "serviceMonitor": {"enabled": True},
        "settings": {"retention_days": 30, "drain_seconds": 45.5, "log_level": "warning"},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
    },
    "postgres-existing-secret": {
        "database": {"backend": "postgres"},
        "replicaCount": 3,
        "secrets": {"existingSecret": "stillroom-credentials"},
        "migrations": {"job": {"enabled": True}},
        "settings": {"migrate_on_start": False},
        "preStopSleepSeconds": 0,
    },
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace="ai")
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def pod_environ(objects: list[dict[str, Any]]) -> dict[str, str]:
    """What the server process finds in its environment, secrets resolved from the render."""
    container = server_container(objects)
    (source,) = container["envFrom"]
    configmap = only(objects, "ConfigMap")
    assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
    environ = dict(configmap["data"])
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    for var in container["env"]:
        if "value" in var:
            environ[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        secret = secrets.get(ref["name"])
        if secret is None:  # an existingSecret: the operator's, not in the render
            continue
        environ[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return environ


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(CASES[request.param])


# -- Helm's own checks, and the Kubernetes schemas ---------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_helm_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, CASES[name], strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert problems == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_is_valid_for_kubernetes(case, version: str) -> None:
    _, objects = case
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema ships with Kubernetes (checked below)
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_check_is_not_vacuous() -> None:
    deployment = only(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["path"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)


def test_the_chart_version_follows_the_app() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert server_container(render())["image"] == f"stillroom:{project['version']}"


# -- the server pods ---------------------------------------------------------------------------


def test_probes_and_port(case) -> None:
    _, objects = case
    container = server_container(objects)
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    environ = pod_environ(objects)
    assert environ["STILLROOM_HOST"] == "0.0.0.0"
    assert environ["STILLROOM_PORT"] == "8080"


def test_runs_as_non_root_on_a_read_only_root(case) -> None:
    _, objects = case
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0  # numeric, so the kubelet can check it
    assert pod["automountServiceAccountToken"] is False
    container = server_container(objects)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_pod_user_is_the_image_user() -> None:
    match = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    if match is None:
        pytest.skip("the Dockerfile names no numeric uid")
    pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(match.group(1))


def test_resources_are_requested_and_memory_is_limited(case) -> None:
    _, objects = case
    resources = server_container(objects)["resources"]
    assert set(resources["requests"]) >= {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_grace_period_outlasts_the_drain(case) -> None:
    name, objects = case
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    environ = pod_environ(objects)
    drain = float(environ["STILLROOM_DRAIN_SECONDS"])
    pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop", {})
    sleep = pre_stop.get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain + 10
    if name == "postgres-existing-secret":
        assert not pre_stop


def test_the_environment_is_one_stillroom_accepts(case) -> None:
    name, objects = case
    environ = pod_environ(objects)
    known = {env_name(f.name) for f in settings_fields()}
    stillroom_vars = {k for k in environ if k.startswith("STILLROOM_")}
    assert stillroom_vars <= known
    if name == "postgres-existing-secret":
        # The operator's Secret supplies these; stand in for it.
        environ["STILLROOM_DATABASE"] = DATABASE_URL
    settings = load_settings(environ)
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    if name.startswith("postgres"):
        assert settings.database == DATABASE_URL
    else:
        assert settings.database == "/data/stillroom.db"


def test_values_mirror_every_setting_with_its_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    unmanaged = {f.name for f in settings_fields()} - MANAGED
    assert set(values["settings"]) == unmanaged
    rendered = load_settings(pod_environ(render()))
    ignore = {"host": "0.0.0.0", "database": "/data/stillroom.db"}
    assert rendered == dataclasses.replace(Settings(), **ignore)


def test_whole_numbers_are_not_printed_as_floats() -> None:
    environ = pod_environ(render({"settings": {"max_request_bytes": 1e8, "flush_interval": 0.25}}))
    assert environ["STILLROOM_MAX_REQUEST_BYTES"] == "100000000"
    assert environ["STILLROOM_FLUSH_INTERVAL"] == "0.25"


def test_sqlite_data_lives_on_the_data_volume() -> None:
    objects = render()
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    assert "PersistentVolumeClaim" not in kinds(objects)

    objects = render(CASES["sqlite-persistent"])
    deployment = only(objects, "Deployment")
    claim = only(objects, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert claim["spec"]["storageClassName"] == "fast"


# -- the objects around the pods ---------------------------------------------------------------


def test_selectors_match_the_server_pods(case) -> None:
    _, objects = case
    deployment = only(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    service = only(objects, "Service")
    assert matches(service["spec"]["selector"], labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = only(objects, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    for job in (o for o in objects if o["kind"] == "Job"):
        job_labels = job["spec"]["template"]["metadata"]["labels"]
        assert not matches(service["spec"]["selector"], job_labels)


def test_the_autoscaler_drives_the_deployment() -> None:
    objects = render(CASES["postgres-scaled"])
    deployment = only(objects, "Deployment")
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert "HorizontalPodAutoscaler" not in kinds(render())


def test_the_service_monitor_scrapes_metrics() -> None:
    assert "ServiceMonitor" not in kinds(render())
    objects = render(CASES["postgres-scaled"])
    monitor = only(objects, "ServiceMonitor")
    service = only(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_no_secret_by_default() -> None:
    objects = render()
    assert "Secret" not in kinds(objects)
    names = {v["name"] for v in server_container(objects)["env"]}
    assert not names & {"STILLROOM_ADMIN_TOKEN", "STILLROOM_UPSTREAM_API_KEY"}


def test_secrets_reach_the_pods_only_through_the_secret() -> None:
    objects = render(CASES["postgres-scaled"])
    secret = only(objects, "Secret")
    assert set(secret["data"]) == {"admin-token", "upstream-api-key", "database-url"}
    environ = pod_environ(objects)
    assert environ["STILLROOM_ADMIN_TOKEN"] == ADMIN_TOKEN
    assert environ["STILLROOM_UPSTREAM_API_KEY"] == UPSTREAM_KEY
    assert environ["STILLROOM_DATABASE"] == DATABASE_URL
    for obj in objects:
        if obj["kind"] != "Secret":
            text = yaml.safe_dump(obj)
            assert ADMIN_TOKEN not in text and UPSTREAM_KEY not in text and "pw@" not in text


def test_an_existing_secret_replaces_the_charts() -> None:
    objects = render(CASES["postgres-existing-secret"])
    assert "Secret" not in kinds(objects)
    refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"]
        for v in server_container(objects)["env"]
        if "valueFrom" in v
    }
    assert {r["name"] for r in refs.values()} == {"stillroom-credentials"}
    assert refs["STILLROOM_DATABASE"]["key"] == "database-url"
    assert refs["STILLROOM_DATABASE"].get("optional") is None
    assert refs["STILLROOM_ADMIN_TOKEN"]["optional"] is True


def test_the_migration_job_runs_before_the_release() -> None:
    objects = render(CASES["postgres-existing-secret"])
    job = only(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["stillroom", "db", "migrate"]
    assert [v["name"] for v in container["env"]] == ["STILLROOM_DATABASE"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_environ(objects)["STILLROOM_MIGRATE_ON_START"] == "false"
    assert "Job" not in kinds(render())


# -- values the chart refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "need database.backend=postgres"),
        ({"autoscaling": {"enabled": True}}, "need database.backend=postgres"),
        ({"database": {"backend": "postgres"}}, "needs database.url=postgresql://"),
        ({"database": {"backend": "postgres", "url": "/data/x.db"}}, "needs database.url"),
        ({"database": {"backend": "mysql"}}, "must be sqlite or postgres"),
        ({"database": {"url": DATABASE_URL}}, "database.backend is sqlite"),
        ({"secrets": {"adminToken": "short"}}, "at least 32 characters"),
        ({"settings": {"host": "127.0.0.1"}}, "settings.host is set by the chart"),
        (
            {"secrets": {"existingSecret": "mine", "upstreamApiKey": "sk-x"}},
            "secrets.existingSecret is set",
        ),
        (
            {
                "database": {"backend": "postgres", "url": DATABASE_URL},
                "migrations": {"job": {"enabled": True}},
            },
            "migrations.job.enabled needs secrets.existingSecret",
        ),
    ],
)
def test_bad_values_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_every_top_level_value_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    missing = [key for key in values if f"`{key}" not in docs]
    assert missing == []
