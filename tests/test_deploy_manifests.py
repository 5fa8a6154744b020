"""The files in deploy/ agree with the server they deploy, checked offline (no cluster, no image build).

The Kubernetes manifests (the base as written, and the base and the example overlay as `kubectl
kustomize` renders them) are validated against the Kubernetes API schema (the `kubernetes`
client's models: unknown fields, wrong types, missing required fields). Then every variable, port,
probe path and metric they use is checked against `assistant serve` itself: its real command line
(server/config.py, through the `assistant` CLI), the answers of its HTTP handler and the metrics
it exports. Renaming a flag, a variable, a path or a metric fails here. The image definition and
the HAProxy configuration get the same checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import kubernetes.client as k8s
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from assistant.backends import build_engine
from assistant.cli import COMMANDS, build_parser
from server.app import make_server_app
from server.config import ServerConfig, config_from_args
from server.context import ServerContext

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SCHEMAS = {
    ("apps/v1", "Deployment"): k8s.V1Deployment,
    ("v1", "Service"): k8s.V1Service,
    ("v1", "PersistentVolumeClaim"): k8s.V1PersistentVolumeClaim,
    ("networking.k8s.io/v1", "Ingress"): k8s.V1Ingress,
    ("policy/v1", "PodDisruptionBudget"): k8s.V1PodDisruptionBudget,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.V2HorizontalPodAutoscaler,
}


# -- the manifests: as written, and as kustomize renders them --------------------------------------


def base_as_written() -> list[dict]:
    """The base's resources read straight from their files: no kustomize needed."""
    base = DEPLOY / "k8s" / "base"
    listed = yaml.safe_load((base / "kustomization.yaml").read_text())["resources"]
    return [doc for name in listed for doc in yaml.safe_load_all((base / name).read_text()) if doc]


def rendered(folder: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: the overlays are checked where `kubectl kustomize` can render them")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(params=["base as written", "base", "example"])
def manifests(request) -> list[dict]:
    return base_as_written() if request.param == "base as written" else rendered(request.param)


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs: list[dict]) -> dict:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


# -- the server, as the manifests would run it --------------------------------------------------------


class Environment(dict):
    """os.environ for one parse, noting every variable the server looks up."""

    def __init__(self, values: dict[str, str]):
        super().__init__(values)
        self.looked_up: set[str] = set()

    def get(self, key, default=None):
        self.looked_up.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.looked_up.add(key)
        return super().__getitem__(key)


def serve_config(env: dict[str, str], args: list[str] | None = None) -> tuple[set[str], ServerConfig]:
    """`assistant serve ARGS` parsed by the real CLI with exactly `env` as its ASSISTANT_* variables;
    returns the variables it looked up, and the config."""
    environment = Environment({k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")} | env)
    with mock.patch.object(os, "environ", environment):
        argv = ["serve", *(args or [])]
        config = config_from_args(build_parser(argv).parse_args(argv))
    return environment.looked_up, config


def container_env(c: dict) -> dict[str, str]:
    """The container's variables; a value from a Secret stands in as "secret"."""
    return {e["name"]: e.get("value", "secret") for e in c.get("env", [])}


def assert_every_variable_is_read(env: dict[str, str]) -> None:
    """Each ASSISTANT_* variable is one `serve` reads: none is a name the server ignores."""
    looked_up, _ = serve_config(env)
    ignored = sorted(name for name in env if name.startswith("ASSISTANT_") and name not in looked_up)
    assert not ignored, f"`assistant serve` reads no {ignored} (renamed?)"


def server_context(config: ServerConfig) -> ServerContext:
    """The server's state for `config` on a weight-free engine (captions off: no model to load)."""
    return ServerContext(dataclasses.replace(config, captions=None), build_engine("silence", batch_size=2))


def answers(config: ServerConfig, path: str, *, state: str = "ok") -> int:
    """The HTTP status the server's own handler gives `path` when it is ok, full or draining."""
    ctx = server_context(config)
    if state == "full":
        while ctx.scheduler.reserve() is not None:
            pass
    ctx.draining = state == "draining"

    async def get() -> int:
        async with TestClient(TestServer(make_server_app(ctx))) as client:
            return (await client.get(path)).status

    return asyncio.run(get())


# -- Kubernetes ------------------------------------------------------------------------------------


def test_every_manifest_matches_the_kubernetes_schema(manifests):
    for doc in manifests:
        schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        assert schema is not None, f"no schema for {doc['apiVersion']} {doc['kind']}: add it to SCHEMAS"
        schema.model_validate(doc)  # raises on an unknown field, a wrong type or a missing field
    volumes = one(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"]
    for volume in volumes:  # a patched volume keeps exactly one source
        assert len(set(volume) - {"name"}) == 1, volume


def test_the_pods_run_the_server_with_its_real_options_ports_and_probes(manifests):
    pod = one(manifests, "Deployment")["spec"]["template"]
    c = container(manifests)
    env = container_env(c)
    assert_every_variable_is_read(env)
    _, config = serve_config(env, c.get("args"))
    assert config.host == "0.0.0.0" and config.max_sessions is not None
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == config.port

    # Readiness fails when full or draining; liveness and start-up only when draining (which the
    # kubelet ignores once the pod is being deleted) or when the server does not answer.
    def probe(kind: str) -> str:
        get = c[kind]["httpGet"]
        assert (
            ports[get["port"]] == config.port if isinstance(get["port"], str) else get["port"] == config.port
        )
        return get["path"]

    readiness = probe("readinessProbe")
    assert [answers(config, readiness, state=s) for s in ("ok", "full", "draining")] == [200, 503, 503]
    for kind in ("livenessProbe", "startupProbe"):
        path = probe(kind)
        assert [answers(config, path, state=s) for s in ("ok", "full", "draining")] == [200, 200, 503]

    # The grace period covers the preStop pause, the drain and the last goodbyes (the sessions'
    # closes, then the port's, each bounded by drain_timeout_s).
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + config.drain_grace_s + 2 * config.drain_timeout_s
    assert config.drain_grace_s > 0 and pod["spec"]["terminationGracePeriodSeconds"] >= needed

    # Prometheus scrapes the server's own port and path.
    notes = pod["metadata"]["annotations"]
    assert int(notes["prometheus.io/port"]) == config.port
    assert answers(config, notes["prometheus.io/path"]) == 200
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    assert any(env["HF_HOME"].startswith(m + "/") for m in mounts), "the model cache is not on a volume"


def test_service_ingress_budget_and_autoscaler_point_at_those_pods(manifests):
    deployment = one(manifests, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    c = container(manifests)
    _, config = serve_config(container_env(c), c.get("args"))
    service = one(manifests, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for rule in one(manifests, "Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
        # The page is served from the Ingress host: the server must allow that browser origin.
        assert f"https://{rule['host']}" in config.allowed_origins
    budget = one(manifests, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    ((metric,),) = [[m["pods"]] for m in hpa["spec"]["metrics"]]
    exported = server_context(config).metrics.render()
    assert f"# TYPE {metric['metric']['name']} gauge" in exported
    # Scale out before the pods are full: a new one needs minutes to load its model.
    assert float(metric["target"]["averageValue"]) < config.max_sessions


def test_the_example_overlay_changes_what_it_says():
    base, example = rendered("base"), rendered("example")
    assert all(doc["metadata"].get("namespace") == "voice" for doc in example)
    assert container(example)["image"] == "registry.example.com/voice/assistant:0.1.0"
    _, base_config = serve_config(container_env(container(base)))
    _, config = serve_config(container_env(container(example)))
    assert (base_config.max_sessions, config.max_sessions) == (8, 32)
    (volume,) = one(example, "Deployment")["spec"]["template"]["spec"]["volumes"]
    claim = one(example, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


# -- the image ---------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_the_image_runs_the_server_it_copies_with_its_own_variables():
    steps = dockerfile()
    args = {k: v for instr, rest in steps if instr == "ARG" for k, _, v in [rest.partition("=")]}
    env = {
        k: v
        for instr, rest in steps
        if instr == "ENV"
        for k, _, v in (w.partition("=") for w in shlex.split(rest))
    }
    (entrypoint,) = [json.loads(rest) for instr, rest in steps if instr == "ENTRYPOINT"]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert entrypoint[0] in pyproject.split("[project.scripts]")[1] and entrypoint[1] in COMMANDS
    assert_every_variable_is_read(env)
    _, config = serve_config({k: v for k, v in env.items() if k.startswith("ASSISTANT_")}, entrypoint[2:])
    (exposed,) = [int(rest) for instr, rest in steps if instr == "EXPOSE"]
    assert config.host == "0.0.0.0" and exposed == config.port
    (check,) = [rest for instr, rest in steps if instr == "HEALTHCHECK"]
    assert "ASSISTANT_PORT" in check
    assert [answers(config, "/healthz", state=s) for s in ("ok", "full", "draining")] == [200, 200, 503]
    assert "/healthz" in check

    # Everything the package needs is copied, and the build context lets it through.
    copied = [rest.split()[0] for instr, rest in steps if instr == "COPY"]
    for source in copied:
        assert (REPO / source).exists(), source
    packages = re.findall(r'"(\w+)\*"', pyproject.split("[tool.setuptools.packages.find]")[1])
    assert set(packages) | {"web", "pyproject.toml"} <= set(copied)
    (install,) = [rest for instr, rest in steps if instr == "RUN" and "pip install -e" in rest]
    assert install.split() == ["pip", "install", "-e", "."], "the image installs the server's set, no extras"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :] and {f"!{s}" for s in copied} <= set(ignore)
    # The same torch as `make test` installs, and the same user as the pods run as.
    assert f"torch=={args['TORCH_VERSION']}" in (REPO / "Makefile").read_text()
    (user,) = [rest for instr, rest in steps if instr == "USER"]
    pod = one(base_as_written(), "Deployment")["spec"]["template"]["spec"]
    assert int(user) == pod["securityContext"]["runAsUser"]


# -- HAProxy -----------------------------------------------------------------------------------------


def test_the_haproxy_config_is_valid_and_checks_what_the_server_serves():
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    _, config = serve_config({}, ["--agent-port", "8999"])
    assert config.agent_port == 8999  # the flag the server lines' agent-port stands for
    for path in re.findall(r"option httpchk GET (\S+)", cfg):
        assert [answers(config, path, state=s) for s in ("ok", "full", "draining")] == [200, 200, 503]
    conversations = re.split(r"^backend ", cfg, flags=re.MULTILINE)[1]
    assert conversations.startswith("conversations\n")
    assert "balance leastconn" in conversations and "agent-check" in conversations
    assert all(
        "agent-port" in line for line in conversations.splitlines() if line.strip().startswith("server ")
    )
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy not installed (apt-get install haproxy): `haproxy -c` not run")
    out = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
