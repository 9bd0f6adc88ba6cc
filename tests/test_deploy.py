"""The shipped container image, compose stack and Kubernetes manifests, checked without an engine.

No Docker engine or Kubernetes cluster runs in CI, so these tests check what can be
checked from the files themselves, against edge itself:

* every YAML file parses, and the pieces refer to each other correctly (ports, service
  names, labels, mounted files);
* every environment variable the compose and Kubernetes files give edge is one edge reads,
  and every shipped TOML passes `edge check-config` with the environment it ships with;
* the Dockerfile's steps work: the slow test rebuilds the image's file system under a
  temporary directory, running the Dockerfile's own `COPY`s (filtered by `.dockerignore`)
  and its `edge-build` steps (docker/build.sh) in a plain venv, then starts edge with the
  image's `CMD` and `ENV`, runs its `HEALTHCHECK` and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _redis import free_port
from _servers import wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = DOCKER / "compose.yml"

#: SPEC §2: the environment variables edge reads. OTEL_* go to the OpenTelemetry exporter.
SPEC_ENV = frozenset({
    "HOST", "PORT", "METRICS_PORT", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL", "ENABLE_L2_CACHE", "REDIS_URL", "ENABLE_METRICS", "ENABLE_TRACING",
    "LOG_LEVEL", "EDGE_CONFIG", "EDGE_API_KEYS",
    # SPEC §7
    "EDGE_ADMIN_KEY", "EDGE_STORE_URL",
})
#: A client key used where a test has to give edge one.
CLIENT_KEY = "sk-edge-test-client-key"


# ---------------------------------------------------------------------------------------
# Reading the files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction; `stage` counts FROM lines from 0."""

    stage: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped, as Docker does."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, args.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return instructions


def dockerfile() -> list[Instruction]:
    return parse_dockerfile((DOCKER / "Dockerfile").read_text())


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """`--name=value` options at the start of an instruction, and the remaining words."""
    words = shlex.split(args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value if name not in flags else f"{flags[name]};{value}"
    return flags, words


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """The final stage's ENV, as the running container sees it."""
    last = instructions[-1].stage
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.stage == last and ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                name, eq, value = word.partition("=")
                assert eq, f"ENV {ins.args!r}: use the NAME=value form"
                env[name] = value
    return env


def exec_form(instructions: list[Instruction], keyword: str) -> list[str]:
    """The JSON (exec) form of the final stage's CMD, or of HEALTHCHECK's CMD."""
    (ins,) = [i for i in instructions if i.keyword == keyword and i.stage == instructions[-1].stage]
    args = ins.args
    if keyword == "HEALTHCHECK":
        args = args[args.index(" CMD ") + len(" CMD "):]
    command = json.loads(args)
    assert isinstance(command, list)
    assert all(isinstance(w, str) for w in command)
    return command


def load_yaml(path: Path) -> Any:
    with path.open() as fh:
        return yaml.safe_load(fh)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE)
    return doc


def edge_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The replicas: services running the edge image with its default command (edge serve)."""
    image = doc["services"]["mock"]["image"]
    return {name: svc for name, svc in doc["services"].items()
            if svc.get("image") == image and "command" not in svc}


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${NAME}` / `${NAME:-default}` substitution, from `env`."""
    def replace(match: re.Match[str]) -> str:
        return env.get(match["name"]) or match["default"] or ""
    return _INTERPOLATION.sub(replace, value)


def service_env(service: dict[str, Any], shell: Mapping[str, str] | None = None) -> dict[str, str]:
    """A compose service's environment after interpolation (no variables set in the shell)."""
    env = service.get("environment", {})
    assert isinstance(env, dict), "write compose environments as maps"
    return {k: interpolate(str(v), shell or {}) for k, v in env.items()}


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object shipped, by kind (one object of each kind)."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in docs, f"two {doc['kind']} objects"
            docs[doc["kind"]] = doc
    return docs


def edge_container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in docs["Deployment"]["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "edge"]
    return container


def edge_reads(name: str) -> bool:
    """Whether edge reads the variable: SPEC §2 names appear literally in edge/config.py."""
    if name.startswith("OTEL_"):
        return True
    return name in SPEC_ENV and f'"{name}"' in (ROOT / "edge" / "config.py").read_text()


def env_references(toml_text: str) -> set[str]:
    """Variables a TOML reads through `"env:NAME"` secrets."""
    return set(re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)"', toml_text))


def check_config(
    tmp_path: Path, toml_text: str, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """`edge check-config` on `toml_text` with exactly `env` for edge's variables."""
    path = tmp_path / "edge.toml"
    path.write_text(toml_text)
    clean = {k: v for k, v in os.environ.items() if k not in SPEC_ENV and not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-m", "edge", "check-config", str(path)],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, check=False)


# ---------------------------------------------------------------------------------------
# .dockerignore and the build context
# ---------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    pattern = posixpath.normpath(pattern.strip("/"))
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i:end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, pattern) pairs in file order; the last match decides."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _glob_regex(line.lstrip("!"))))
    return rules


def is_ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for exception, regex in rules:
        if any(regex.match(p) for p in prefixes):
            ignored = not exception
    return ignored


def build_context(dest: Path) -> Path:
    """Copy the repository as `docker build` would send it (.dockerignore applied)."""
    rules = dockerignore()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        dirnames[:] = [d for d in dirnames if not is_ignored(posixpath.join(rel_dir, d), rules)]
        for name in filenames:
            rel = posixpath.join(rel_dir, name)
            if not is_ignored(rel, rules):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / name, target)
    return dest


# ---------------------------------------------------------------------------------------
# Fast checks
# ---------------------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    paths = sorted([*DOCKER.rglob("*.yml"), *DOCKER.rglob("*.yaml"), *K8S.rglob("*.yaml")])
    assert COMPOSE in paths
    assert DOCKER / "prometheus.yml" in paths
    assert len(list(K8S.glob("*.yaml"))) >= 8
    for path in paths:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs, path
        assert all(isinstance(d, dict) for d in docs), path


def test_dockerfile_builds_in_two_stages_and_runs_as_non_root() -> None:
    ins = dockerfile()
    froms = [shlex.split(i.args) for i in ins if i.keyword == "FROM"]
    assert [f[0] for f in froms] == ["python:3.11-slim", "python:3.11-slim"]
    builder = froms[0][-1]
    runs = {stage: " ".join(i.args for i in ins if i.stage == stage and i.keyword == "RUN")
            for stage in (0, 1)}
    assert "build-essential" in runs[0]
    assert "edge-build wheel" in runs[0]
    # The runtime stage installs the built wheel, and has no compiler or source tree.
    assert "build-essential" not in runs[1]
    assert "edge-build install" in runs[1]
    assert f"from={builder}" in runs[1]
    runtime_copies = [split_flags(i.args)[1] for i in ins if i.stage == 1 and i.keyword == "COPY"]
    assert runtime_copies == [["docker/edge.toml", "/etc/edge/edge.toml"]]

    env = image_env(ins)
    assert env["HOST"] == "0.0.0.0"
    assert env["EDGE_CONFIG"] == "/etc/edge/edge.toml"
    exposed = {int(p.split("/")[0]) for i in ins if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {8080, 9090} == {int(env["PORT"]), int(env["METRICS_PORT"])}
    (user,) = [i.args for i in ins if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) > 0
    assert int(gid) > 0
    assert exec_form(ins, "CMD") == ["edge", "serve"]
    health = exec_form(ins, "HEALTHCHECK")
    assert health[:2] == ["python", "-c"]
    assert "/health/live" in health[2]


def test_build_context_has_the_sources_and_no_build_artifacts(tmp_path: Path) -> None:
    context = build_context(tmp_path / "context")
    files = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    for ins in dockerfile():
        if ins.keyword == "COPY":
            flags, words = split_flags(ins.args)
            if "from" not in flags:
                for src in words[:-1]:
                    assert (context / src).exists(), f"COPY {src}: not in the build context"
    assert "edge/_fastpath.pyx" in files
    assert "docker/build.sh" in files
    # A stale module compiled for another Python must never reach the image.
    assert not any(f.endswith((".so", ".c", ".pyc")) for f in files)
    assert not any(f.startswith((".git/", "tests/", ".venv/", "build/")) for f in files)
    assert (ROOT / "edge" / "_fastpath.pyx").exists()


def test_dockerignore_matching() -> None:
    rules = [(False, _glob_regex("**/*.so")), (False, _glob_regex("build")),
             (True, _glob_regex("build/keep.txt"))]
    assert is_ignored("edge/_fastpath.cpython-311-x86_64-linux-gnu.so", rules)
    assert is_ignored("build/lib/x.py", rules)
    assert not is_ignored("build/keep.txt", rules)
    assert not is_ignored("edge/build.py", rules)


def test_compose_runs_three_replicas_behind_a_balancer_with_the_stack() -> None:
    doc = compose()
    services = doc["services"]
    assert {"lb", "mock", "redis", "prometheus", "grafana", "jaeger"} <= services.keys()
    replicas = edge_services(doc)
    assert len(replicas) == 3
    mock = services["mock"]
    assert mock["command"] == ["edge", "mock-upstream", "--host", "0.0.0.0", "--port", "8000"]
    assert mock["build"]["dockerfile"] == "docker/Dockerfile"
    assert (COMPOSE.parent / mock["build"]["context"] / ".dockerignore").exists()
    port = image_env(dockerfile())["PORT"]

    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)",
                           (DOCKER / "nginx.conf").read_text(), re.MULTILINE)
    assert sorted(upstreams) == sorted((name, port) for name in replicas)
    lb_mounts = [v.split(":")[0] for v in services["lb"]["volumes"]]
    assert "./nginx.conf" in lb_mounts
    assert set(services["lb"]["depends_on"]) == set(replicas)

    for name, svc in replicas.items():
        env = service_env(svc)
        assert env["OPENAI_API_KEY"] == "sk-mock"
        assert env["OPENAI_BASE_URL"] == "http://mock:8000/v1"
        assert env["ENABLE_L2_CACHE"] == "true"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["ENABLE_TRACING"] == "true"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://jaeger:4318")
        assert env["EDGE_API_KEYS"], f"{name}: binding 0.0.0.0 needs client keys"
        assert "./edge.toml:/etc/edge/edge.toml:ro" in svc["volumes"]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_compose_bind_mounts_exist() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"


def test_grafana_provisions_prometheus_as_its_datasource() -> None:
    services = compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provisioning = COMPOSE.parent / next(s for s, t in mounts.items()
                                         if t == "/etc/grafana/provisioning")
    sources = [ds for path in sorted((provisioning / "datasources").glob("*.y*ml"))
               for ds in load_yaml(path)["datasources"]]
    prometheus = next(ds for ds in sources if ds["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090"
    assert prometheus["isDefault"] is True
    assert "prometheus" in services


def test_grafana_dashboards_are_mounted_where_provisioned_and_use_provisioned_sources() -> None:
    services = compose()["services"]
    mounts = {target: COMPOSE.parent / source
              for source, target, *_ in (v.split(":") for v in services["grafana"]["volumes"])}
    provisioning = mounts["/etc/grafana/provisioning"]
    uids = {ds["uid"] for path in (provisioning / "datasources").glob("*.y*ml")
            for ds in load_yaml(path)["datasources"]}
    providers = [p for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for p in load_yaml(path)["providers"]]
    assert providers, "no dashboard provider"
    for provider in providers:
        folder = mounts[provider["options"]["path"]]
        dashboards = sorted(folder.glob("*.json"))
        assert dashboards, f"no dashboards in {folder}"
        for dashboard in dashboards:
            used = set(re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"$]+)"',
                                  dashboard.read_text()))
            assert used <= uids, f"{dashboard.name} uses data sources {used - uids}"


def image_extras() -> list[str]:
    """The extras the image installs with the wheel (the Dockerfile's EDGE_EXTRAS)."""
    (extras,) = [i.args.partition("=")[2] for i in dockerfile()
                 if i.keyword == "ARG" and i.args.startswith("EDGE_EXTRAS=")]
    return extras.split(",")


def test_image_installs_the_tracing_extra_compose_turns_on() -> None:
    replicas = edge_services(compose()).values()
    assert all(service_env(svc)["ENABLE_TRACING"] == "true" for svc in replicas)
    assert "tracing" in image_extras()
    # Without it edge exits at start-up with tracing on (edge/tracing.py).
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "tracing" in declared.get("optional-dependencies", {}), (
        "pyproject.toml: add the `tracing` extra (OpenTelemetry SDK + OTLP/HTTP exporter)")


def test_replicas_share_one_postgres_store_the_image_can_reach() -> None:
    doc = compose()
    replicas = edge_services(doc)
    urls = {service_env(svc)["EDGE_STORE_URL"] for svc in replicas.values()}
    (url,) = urls  # one store: keys made or revoked on one replica hold on all (SPEC §7)
    assert url.startswith("postgresql://")
    assert "@postgres:5432/" in url
    assert all("postgres" in svc["depends_on"] for svc in replicas.values())
    assert "pg_isready" in doc["services"]["postgres"]["healthcheck"]["test"]
    assert "postgres" in image_extras()  # psycopg 3, without which the URL is refused
    secret = k8s_docs()["Secret"]["stringData"]
    assert secret["EDGE_STORE_URL"].startswith("postgresql://")


def test_prometheus_scrapes_every_replica_on_the_metrics_port() -> None:
    doc = compose()
    metrics_port = image_env(dockerfile())["METRICS_PORT"]
    replicas = edge_services(doc)
    for svc in replicas.values():
        assert "METRICS_PORT" not in service_env(svc)  # so the image's port is the one
    mounts = [v.split(":") for v in doc["services"]["prometheus"]["volumes"]]
    assert ["./prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts
    config = load_yaml(DOCKER / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "edge"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{metrics_port}" for name in replicas}


def test_environment_given_to_edge_is_environment_edge_reads() -> None:
    assert all(edge_reads(name) for name in SPEC_ENV)
    for name, svc in edge_services(compose()).items():
        unknown = [k for k in service_env(svc) if not edge_reads(k)]
        assert not unknown, f"compose {name}: edge does not read {unknown}"
    docs = k8s_docs()
    container = edge_container(docs)
    names = [e["name"] for e in container["env"]]
    for source in container["envFrom"]:
        assert source["secretRef"]["name"] == docs["Secret"]["metadata"]["name"]
        names += list(docs["Secret"]["stringData"])
    toml_refs = env_references(docs["ConfigMap"]["data"]["edge.toml"])
    unknown = [n for n in names if not edge_reads(n) and n not in toml_refs]
    assert not unknown, f"Kubernetes: edge does not read {unknown}"
    assert not edge_reads("EDGE_PORT")
    assert not edge_reads("REDIS_HOST")


def test_compose_edge_toml_passes_check_config(tmp_path: Path) -> None:
    toml_text = (DOCKER / "edge.toml").read_text()
    tomllib.loads(toml_text)
    (first, *_) = edge_services(compose()).values()
    env = {**image_env(dockerfile()), **service_env(first)}
    done = check_config(tmp_path, toml_text, env)
    assert done.returncode == 0, done.stderr
    assert "listeners: http://0.0.0.0:8080  metrics: http://0.0.0.0:9090/metrics" in done.stdout
    assert "openai (openai) http://mock:8000/v1" in done.stdout
    assert "L2 redis redis://redis:6379/0" in done.stdout
    assert "tracing: on" in done.stdout
    # The container is safe by default: on 0.0.0.0 with no client keys it refuses to start.
    no_keys = {k: v for k, v in env.items() if k != "EDGE_API_KEYS"}
    refused = check_config(tmp_path, toml_text, no_keys)
    assert refused.returncode == 2
    assert "allow_anonymous" in refused.stderr


def test_kubernetes_edge_toml_passes_check_config(tmp_path: Path) -> None:
    docs = k8s_docs()
    toml_text = docs["ConfigMap"]["data"]["edge.toml"]
    container = edge_container(docs)
    env = {**image_env(dockerfile()), **docs["Secret"]["stringData"],
           **{e["name"]: e["value"] for e in container["env"]}}
    done = check_config(tmp_path, toml_text, env)
    assert done.returncode == 0, done.stderr
    assert "L2 redis cluster" in done.stdout
    assert "listeners: http://0.0.0.0:8080" in done.stdout


def test_kubernetes_objects_fit_together() -> None:
    docs = k8s_docs()
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service",
            "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= docs.keys()
    namespace = docs["Namespace"]["metadata"]["name"]
    for kind, doc in docs.items():
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, kind

    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = edge_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = image_env(dockerfile())
    assert ports == {"http": int(env["PORT"]), "metrics": int(env["METRICS_PORT"])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]

    # Non-root, read-only root file system, /tmp writable.
    user = next(i.args for i in dockerfile() if i.keyword == "USER")
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    config_dir = posixpath.dirname(env["EDGE_CONFIG"])
    config_volume = volumes[mounts[config_dir]]["configMap"]
    assert config_volume["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert config_volume["items"] == [{"key": "edge.toml", "path": "edge.toml"}]
    # edge drains for graceful_timeout_s after SIGTERM; the pod must be given that long.
    graceful = tomllib.loads(docs["ConfigMap"]["data"]["edge.toml"])["server"]["graceful_timeout_s"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > graceful + 5

    service = docs["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} <= ports.keys()

    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = docs["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_kubernetes_secret_is_a_template_and_kustomize_leaves_it_out() -> None:
    secret = k8s_docs()["Secret"]
    for name, value in secret["stringData"].items():
        assert "REPLACE" in value or (name == "REDIS_URL" and "@" not in value), name
    kustomization = load_yaml(K8S / "kustomization.yaml")
    resources = set(kustomization["resources"])
    shipped = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == shipped - {"secret.template.yaml"}


# ---------------------------------------------------------------------------------------
# The image's build and start, in a plain venv
# ---------------------------------------------------------------------------------------

#: Extra pip options per build step. The builder compiles with this interpreter's
#: setuptools and Cython instead of downloading them; the runtime venv gets edge's
#: dependencies from this interpreter (deps.pth) instead of the package index.
_PIP_OPTIONS = {"wheel": ["--no-build-isolation"], "install": ["--no-deps", "--no-index"]}


class ImageRoot:
    """The image's file system under a directory: `/x` in the image is `root / "x"`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")


def _fresh_venv(path: Path) -> Path:
    """A venv with pip and nothing else, which reads edge's dependencies from this interpreter."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True,
                   timeout=120)
    python = path / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(python), "-c", where], check=True, capture_output=True,
                             text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # Appended after the venv's own site-packages, so the installed wheel's `edge` wins.
    Path(purelib, "deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return path / "bin"


def build_image(tmp: Path) -> tuple[ImageRoot, Path]:
    """Run the Dockerfile's COPY and edge-build steps; returns the image root and its bin dir."""
    context = build_context(tmp / "context")
    image = ImageRoot(tmp / "root")
    runtime_bin = _fresh_venv(tmp / "venv")
    python_dirs = {0: Path(sys.executable).parent, 1: runtime_bin}
    workdir = "/"
    args: dict[str, str] = {}
    steps = []
    for ins in dockerfile():
        if ins.keyword == "FROM":
            workdir, args = "/", {}
        elif ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default  # RUN sees build arguments as environment variables
        elif ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
        elif ins.keyword == "COPY":
            _copy(ins, context, image, workdir)
        elif ins.keyword == "RUN":
            flags, words = split_flags(ins.args)
            if words[0] != "edge-build":
                continue  # apt-get, useradd: the host's business here
            for mount in filter(None, flags.get("mount", "").split(";")):
                opts = dict(o.split("=", 1) for o in mount.split(","))
                assert opts["source"] == opts["target"], "emulated stages share one root"
            script = image.path("/usr/local/bin/edge-build")
            argv = [str(image.path(w)) if w.startswith("/") else w for w in words[1:]]
            env = {**os.environ, **args,
                   "PATH": f"{python_dirs[ins.stage]}{os.pathsep}{os.environ['PATH']}"}
            done = subprocess.run(["sh", str(script), *argv, *_PIP_OPTIONS[argv[0]]], env=env,
                                  capture_output=True, text=True, timeout=300,
                                  cwd=image.path(workdir), check=False)
            assert done.returncode == 0, f"RUN {ins.args}\n{done.stdout}\n{done.stderr}"
            steps.append(argv[0])
    assert steps == ["wheel", "install"]
    return image, runtime_bin


def _copy(ins: Instruction, context: Path, image: ImageRoot, workdir: str) -> None:
    flags, words = split_flags(ins.args)
    assert "from" not in flags, "COPY --from is not emulated; use RUN --mount"
    *sources, dest = words
    target = image.path(posixpath.join(workdir, dest))
    for src in sources:
        origin = context / src
        if origin.is_dir():
            shutil.copytree(origin, target, dirs_exist_ok=True)
            continue
        final = target / origin.name if dest.endswith("/") or len(sources) > 1 else target
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, final)
        if "chmod" in flags:
            final.chmod(int(flags["chmod"], 8))


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """Start processes with their output in files; whatever still runs is killed at the end."""
    started: list[Started] = []

    def run(cmd: list[str], env: dict[str, str], cwd: Path) -> Started:
        log = tmp_path / f"proc-{len(started)}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        started.append(Started(proc, log))
        return started[-1]

    yield run
    for item in started:
        if item.proc.poll() is None:
            item.proc.kill()
            item.proc.wait()


def _resolve(command: list[str], bin_dir: Path) -> list[str]:
    """argv[0] as the image's PATH finds it (the venv's bin stands in for /usr/local/bin)."""
    found = shutil.which(command[0], path=str(bin_dir))
    assert found, f"{command[0]} is not installed in the image"
    return [found, *command[1:]]


@pytest.mark.slow
def test_image_builds_starts_passes_its_healthcheck_and_stops_on_sigterm(tmp_path: Path,
                                                                         start: Any) -> None:
    image, bin_dir = build_image(tmp_path)
    base = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "LANG": "C.UTF-8"}

    # The installed package is the compiled wheel, not the source tree next to the tests.
    probe = subprocess.run([str(bin_dir / "python"), "-c",
                            "import edge, edge.fastpath as f; print(edge.__file__, f.COMPILED)"],
                           env=base, cwd=image.root, capture_output=True, text=True, check=True)
    location, compiled = probe.stdout.split()
    assert Path(location).is_relative_to(bin_dir.parent)
    assert compiled == "True"

    # The compose stack's mock service: the same image, its own command.
    mock_cmd = compose()["services"]["mock"]["command"]
    mock_port = free_port()
    mock_cmd = [*mock_cmd[:mock_cmd.index("--host")], "--host", "127.0.0.1",
                "--port", str(mock_port)]
    mock = start(_resolve(mock_cmd, bin_dir), base, image.root)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{mock_port}/mock/stats").status_code == 200,
               what="mock upstream")

    # edge with the image's CMD and ENV; the shipped edge.toml sits at EDGE_CONFIG.
    ins = dockerfile()
    env = image_env(ins)
    assert image.path(env["EDGE_CONFIG"]).read_text() == (DOCKER / "edge.toml").read_text()
    port, metrics_port = free_port(), free_port()
    env.update(base, EDGE_CONFIG=str(image.path(env["EDGE_CONFIG"])), PORT=str(port),
               METRICS_PORT=str(metrics_port), OPENAI_API_KEY="sk-mock",
               OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1", EDGE_API_KEYS=CLIENT_KEY)
    assert env["HOST"] == "0.0.0.0"
    edge = start(_resolve(exec_form(ins, "CMD"), bin_dir), env, image.root)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert edge.proc.poll() is None, f"edge exited early:\n{edge.output()}"
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200

    wait_until(ready, what="edge ready")
    assert httpx.get(f"{url}/health/live").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").status_code == 200
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "from the image"}]}
    answered = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert answered.status_code == 200
    assert answered.headers["x-edge-provider"] == "openai"
    assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 401

    healthcheck = _resolve(exec_form(ins, "HEALTHCHECK"), bin_dir)
    health_env = {**base, "PORT": str(port)}
    assert subprocess.run(healthcheck, env=health_env, capture_output=True, timeout=30,
                          check=False).returncode == 0

    edge.proc.send_signal(signal.SIGTERM)
    assert edge.proc.wait(timeout=30) == 0, edge.output()
    assert subprocess.run(healthcheck, env=health_env, capture_output=True, timeout=30,
                          check=False).returncode != 0
    mock.proc.send_signal(signal.SIGTERM)
    assert mock.proc.wait(timeout=30) == 0
