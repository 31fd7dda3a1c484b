"""Deployment files that work: compose (rendered by ``swarm deploy compose``; checked by docker-compose, by
parsing, with the real nats-server and, where an engine runs, the runner container's sandbox), Kubernetes
(kubernetes-validate against the API schemas; the NATS chart's auth include with the real nats-server),
the SkyPilot task (SkyPilot's own parser; its run script against a fake nvidia-smi) and the Dockerfile."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bus import security
from bus.server import nats_server_binary
from runner.__main__ import parse_args
from runner.config import RunnerConfig
from swarmcli.deploy import deploy, render_compose
from tests.conftest import skip_or_fail
from tests.support.engine import docker_image_or_skip

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """compose's ${VAR:-default}, as `docker compose` resolves it (env, else the default)."""
    env = env or {}
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], value)


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _render(tmp: Path, gpus: int, *args: str) -> tuple[Path, dict[str, Any]]:
    """`swarm creds` and `swarm deploy compose` into tmp, as a person would; the file and its YAML."""
    security.generate(tmp / ".swarm" / "creds")
    out = tmp / "compose.yaml"
    res = CliRunner().invoke(deploy, ["compose", "--gpus", str(gpus), "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    return out, yaml.safe_load(out.read_text())


def _runner_config(service: dict[str, Any], env: dict[str, str] | None = None) -> RunnerConfig:
    """The runner's own argument parser on the service's command: the flags exist and mean what we say."""
    cmd = [_interpolate(a, env) for a in service["command"]]
    assert cmd[:2] == ["swarm", "runner"], cmd
    return parse_args([*cmd[2:], "--nats", service["environment"]["SWARM_NATS_URL"]])


def _runners(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in doc["services"].items() if k.startswith("runner-")}


# --------------------------------------------------------------------------------------------------
# compose


def test_committed_compose_yaml_is_the_generators_output() -> None:
    res = CliRunner().invoke(deploy, ["compose", "--gpus", "2"])
    assert res.exit_code == 0, res.output
    assert (REPO / "compose.yaml").read_text() == res.output, (
        "run: swarm deploy compose --gpus 2 --out compose.yaml"
    )


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_each_runner_sees_exactly_its_gpu_with_the_runner_role_in_the_namespace_sandbox(
    tmp_path: Path, gpus: int
) -> None:
    out, doc = _render(tmp_path, gpus)
    runners = _runners(doc)
    assert sorted(runners) == sorted(f"runner-gpu{i}" for i in range(gpus))
    ids, states = set(), set()
    for i in range(gpus):
        svc = runners[f"runner-gpu{i}"]
        (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert dev == {"driver": "nvidia", "device_ids": [str(i)], "capabilities": ["gpu"]}  # only its GPU...
        cfg = _runner_config(svc, {"SWARM_NODE": "box7"})
        assert cfg.gpu == 0  # ... which the container sees as device 0
        assert (cfg.executor, cfg.isolation) == ("process", "namespace")  # sandboxed, or refuses to start
        assert svc["user"] == "0:0" and svc["cap_add"] == ["SYS_ADMIN"]
        assert set(svc["security_opt"]) == {"seccomp=unconfined", "apparmor=unconfined"}
        (env_file,) = svc["env_file"]
        assert _env_file(out.parent / env_file)["SWARM_NATS_USER"] == "runner"
        ids.add(cfg.runner_id)
        states.add(next(v for v in svc["volumes"] if v.endswith(":/state")))
        assert str(cfg.state_dir) == "/state" and str(cfg.cache_dir) == "/cache"
    assert ids == {f"box7-gpu{i}" for i in range(gpus)} and len(states) == gpus
    roles = {name: _env_file(out.parent / svc["env_file"][0])["SWARM_NATS_USER"]
             for name, svc in doc["services"].items() if "env_file" in svc}  # fmt: skip
    assert roles == {"ledger": "ledger", "agents": "agent", **{r: "runner" for r in runners}}
    assert "ANTHROPIC_API_KEY" in doc["services"]["agents"]["environment"]
    assert "-js" in doc["services"]["nats"]["command"]


def test_docker_sandbox_runners_start_containers_on_their_host_gpu(tmp_path: Path) -> None:
    _, doc = _render(
        tmp_path, 4, "--sandbox", "docker", "--hw-class", "h100-sxm", "--host-root", "/srv/swarm"
    )
    runners = _runners(doc)
    assert len(runners) == 4
    for i in range(4):
        svc = runners[f"runner-gpu{i}"]
        cfg = _runner_config(svc)
        assert (cfg.executor, cfg.gpu, cfg.hw_class, cfg.profile) == ("docker", i, "h100-sxm", "gpu")
        assert "deploy" not in svc  # the experiment containers get the GPU, by the host's index
        assert (
            "/var/run/docker.sock:/var/run/docker.sock" in svc["volumes"]
            and "/srv/swarm:/srv/swarm" in svc["volumes"]
        )
        assert str(cfg.state_dir) == f"/srv/swarm/runner-gpu{i}" and str(cfg.cache_dir) == "/srv/swarm/cache"
    res = CliRunner().invoke(
        deploy,
        [
            "compose",
            "--gpus",
            "2",
            "--sandbox",
            "docker",
            "--hw-class",
            "a",
            "--hw-class",
            "b",
            "--hw-class",
            "c",
        ],
    )
    assert res.exit_code != 0 and "given 3 times for 2 GPUs" in res.output


def test_bad_input_is_a_clear_error() -> None:
    res = CliRunner().invoke(deploy, ["compose", "--gpus", "-1"])
    assert res.exit_code != 0 and "give the number of GPUs" in res.output
    cpu = _runners(render_compose(0))
    assert list(cpu) == ["runner-cpu"] and "deploy" not in cpu["runner-cpu"]  # 0 GPUs: one CPU runner
    assert _runner_config(cpu["runner-cpu"]).gpu is None


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        skip_or_fail("docker-compose is not installed (apt-get install docker-compose)")
        return
    out, _ = _render(tmp_path, 3)
    env = {**os.environ, "SWARM_NODE": "box7", "SWARM_RUN": "r1", "ANTHROPIC_API_KEY": "sk-test"}
    r = subprocess.run([exe, "-f", str(out), "config"], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    services = yaml.safe_load(r.stdout)["services"]
    creds = {role: _env_file(tmp_path / ".swarm" / "creds" / f"{role}.env") for role in security.ROLES}
    for i in range(3):
        svc = services[f"runner-gpu{i}"]
        # the resolved environment: the runner role's user and password, the run, the bus inside compose
        assert svc["environment"]["SWARM_NATS_USER"] == "runner"
        assert svc["environment"]["SWARM_NATS_PASSWORD"] == creds["runner"]["SWARM_NATS_PASSWORD"]
        assert svc["environment"]["SWARM_RUN"] == "r1"
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [str(i)]
        assert svc["command"][svc["command"].index("--id") + 1] == f"box7-gpu{i}"
    assert services["agents"]["environment"]["ANTHROPIC_API_KEY"] == "sk-test"
    assert services["agents"]["environment"]["SWARM_NATS_USER"] == "agent"
    assert services["ledger"]["environment"]["SWARM_NATS_URL"] == "nats://nats:4222"
    # the committed file is valid too (with the credentials it names in place)
    committed = tmp_path / "committed"
    committed.mkdir()
    shutil.copy(REPO / "compose.yaml", committed / "compose.yaml")
    shutil.copytree(tmp_path / ".swarm", committed / ".swarm")
    r = subprocess.run([exe, "-f", "compose.yaml", "config", "-q"], capture_output=True, text=True, cwd=committed,
                       env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    # and the docker-sandbox variant
    docker_dir = tmp_path / "docker-sandbox"
    docker_dir.mkdir()
    out, _ = _render(docker_dir, 2, "--sandbox", "docker", "--hw-class", "h100-sxm")
    r = subprocess.run([exe, "-f", str(out), "config"], capture_output=True, text=True, cwd=docker_dir, env=env,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    svc = yaml.safe_load(r.stdout)["services"]["runner-gpu1"]
    assert svc["environment"]["SWARM_NATS_USER"] == "runner" and "research-swarm:latest" in svc["command"]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


def _start_nats(args: list[str]) -> subprocess.Popen[str]:
    """The real nats-server with these arguments, once it says it is ready (bounded)."""
    proc = subprocess.Popen([nats_server_binary(), *args], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if "Server is ready" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    _stop(proc)
    raise AssertionError("nats-server did not start:\n" + "".join(seen))


async def _check_roles(url: str, creds: Path) -> None:
    import nats
    from nats.aio.client import Client as NATS
    from nats.errors import Error as NatsError

    runner = _env_file(creds / "runner.env")
    nc = await nats.connect(url, user=runner["SWARM_NATS_USER"], password=runner["SWARM_NATS_PASSWORD"],
                            allow_reconnect=False)  # fmt: skip
    info = await nc.jetstream().account_info()  # JetStream is on, and the runner may ask
    assert info is not None
    await nc.close()
    for user, password in ((runner["SWARM_NATS_USER"], "wrong"), (None, None)):
        refused = NATS()
        with pytest.raises((NatsError, OSError)):
            await refused.connect(url, user=user, password=password, allow_reconnect=False, connect_timeout=5)
        await refused.close()  # a refused client still holds its socket until closed


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_compose_nats_command_enforces_the_swarm_creds_users(tmp_path: Path) -> None:
    out, doc = _render(tmp_path, 1)
    nats_svc = doc["services"]["nats"]
    host_of = {v.split(":")[1]: v.split(":")[0] for v in nats_svc["volumes"]}  # container path -> source
    auth = out.parent / host_of["/etc/nats/auth.conf"]
    assert auth.is_file()
    args = [str(auth) if a == "/etc/nats/auth.conf" else str(tmp_path / "js") if a == "/data" else a
            for a in nats_svc["command"]]  # fmt: skip
    args[args.index("-m") + 1] = str(_free_port())
    port = _free_port()
    proc = _start_nats([*args, "-a", "127.0.0.1", "-p", str(port)])
    try:
        asyncio.run(_check_roles(f"nats://127.0.0.1:{port}", tmp_path / ".swarm" / "creds"))
    finally:
        _stop(proc)


@pytest.mark.docker
def test_the_namespace_sandbox_works_in_the_runner_container(tmp_path: Path) -> None:
    """With the rendered runner service's user, capabilities and security options the sandbox starts a step
    (as nobody); without them it cannot. A real container on a real engine (the host's /usr and Python
    bind-mounted read-only into an image imported from an empty tar)."""
    image = docker_image_or_skip()
    import docker

    svc = _runners(render_compose(1))["runner-gpu0"]
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from runner.executors.sandbox import namespace_available, wrap_namespace\n"
        "import subprocess\n"
        "ok = namespace_available(False, Path('/tmp/probe'))\n"
        "uid = ''\n"
        "if ok:\n"
        "    cmd = wrap_namespace(['id', '-u'], root=Path('/tmp/r'), cwd=Path('/'), mounts=[], hidden=[], user_ns=False)\n"
        "    Path('/tmp/r').mkdir()\n"
        "    uid = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()\n"
        "print(ok, uid)\n"
    )
    volumes = {p: {"bind": p, "mode": "ro"} for p in {"/usr", sys.prefix, sys.base_prefix, str(REPO)}}
    client = docker.from_env()
    try:
        outputs = []
        for opts in ({"user": svc["user"], "cap_add": svc["cap_add"], "security_opt": svc["security_opt"]},
                     {"user": svc["user"]}):  # fmt: skip
            out = client.containers.run(image, [sys.executable, "-c", code, str(REPO)], volumes=volumes,
                                        network_mode="none", tmpfs={"/tmp": ""}, remove=True, **opts)  # fmt: skip
            outputs.append(out.decode().strip())
    finally:
        client.close()
    assert outputs == ["True 65534", "False"], outputs


# --------------------------------------------------------------------------------------------------
# Kubernetes


def _k8s_docs() -> dict[str, dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = {}
    for name in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate as kv

    docs = _k8s_docs()
    assert set(docs) == {"ConfigMap/swarm-config", "StatefulSet/swarm-ledger", "StatefulSet/swarm-runner",
                         "Deployment/swarm-agents"}  # fmt: skip
    for version in ("1.30.0", kv.latest_version()):  # appArmorProfile is a field since 1.30
        for doc in docs.values():
            kv.validate(doc, version, strict=True)
    # the validator does bite: a misspelt field is refused
    bad = json.loads(json.dumps(docs["StatefulSet/swarm-runner"]))
    bad["spec"]["template"]["spec"]["containers"][0]["resorces"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_k8s_runner_pods_each_get_one_gpu_and_the_runner_role() -> None:
    docs = _k8s_docs()
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    secrets = {g["name"]: g for g in kust["secretGenerator"]}
    # every role's Secret comes from the file `swarm creds` writes for it
    for role in security.ROLES:
        assert secrets[f"swarm-{role}-creds"]["envs"] == [f"creds/{role}.env"]

    def creds_of(doc: dict[str, Any]) -> str:
        (c,) = doc["spec"]["template"]["spec"]["containers"]
        (ref,) = [e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e]
        assert ref in secrets
        return ref

    runner = docs["StatefulSet/swarm-runner"]
    (c,) = runner["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod_name = next(e for e in c["env"] if e["name"] == "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod_name == "metadata.name"
    cfg = parse_args([*[a.replace("$(POD_NAME)", "swarm-runner-3") for a in c["args"]]])
    assert (cfg.gpu, cfg.executor, cfg.isolation, cfg.runner_id) == (
        0,
        "process",
        "namespace",
        "swarm-runner-3",
    )
    assert c["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    assert {v["metadata"]["name"] for v in runner["spec"]["volumeClaimTemplates"]} == {"state", "cache"}
    assert creds_of(runner) == "swarm-runner-creds"
    ledger = docs["StatefulSet/swarm-ledger"]
    assert (
        ledger["spec"]["replicas"] == 1
        and ledger["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "ledger"
    )
    assert creds_of(ledger) == "swarm-ledger-creds"
    agents = docs["Deployment/swarm-agents"]
    assert creds_of(agents) == "swarm-agent-creds"
    keys = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in agents["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert {k: v["name"] for k, v in keys.items()} == {
        "ANTHROPIC_API_KEY": "swarm-llm-keys",
        "OPENAI_API_KEY": "swarm-llm-keys",
    }


def test_nats_chart_values_include_the_swarm_creds_users(tmp_path: Path) -> None:
    """The chart writes nats.conf into /etc/nats-config and turns a `…$include` key into `include <path>;`
    (relative to that directory): lay the files out as the pod will and start the real nats-server."""
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert values["config"]["jetstream"]["enabled"] and values["config"]["cluster"]["replicas"] == 3
    (include,) = [v for k, v in values["config"]["merge"].items() if k.endswith("$include")]
    (mount,) = [p["value"] for p in values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    (volume,) = [p["value"] for p in values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    assert mount["name"] == volume["name"]
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (files,) = [g["files"] for g in kust["secretGenerator"] if g["name"] == volume["secret"]["secretName"]]
    key = files[0].split("=")[0]
    assert os.path.normpath(f"/etc/nats-config/{include}") == f"{mount['mountPath']}/{key}"
    root = tmp_path / "pod"
    security.generate(tmp_path / "creds")
    (root / mount["mountPath"].lstrip("/")).mkdir(parents=True)
    shutil.copy(tmp_path / "creds" / "auth.conf", root / mount["mountPath"].lstrip("/") / key)
    conf_dir = root / "etc" / "nats-config"
    conf_dir.mkdir(parents=True)
    port = _free_port()
    (conf_dir / "nats.conf").write_text(
        f"include {include};\nport: {port}\nhost: 127.0.0.1\njetstream {{ store_dir: {json.dumps(str(tmp_path / 'js'))} }}\n"
    )
    proc = _start_nats(["-c", str(conf_dir / "nats.conf")])
    try:
        asyncio.run(_check_roles(f"nats://127.0.0.1:{port}", tmp_path / "creds"))
    finally:
        _stop(proc)


# --------------------------------------------------------------------------------------------------
# SkyPilot


SKY_PYTHON = REPO / ".venv-skypilot" / "bin" / "python"


def test_skypilot_task_loads_with_skypilots_own_parser() -> None:
    """SkyPilot pins click<8.2 (older than this project's CLI), so its parser runs from its own venv, which
    .ci/run creates (`python3 -m venv .venv-skypilot && .venv-skypilot/bin/pip install skypilot`)."""
    if not SKY_PYTHON.exists():
        skip_or_fail(f"no SkyPilot venv at {SKY_PYTHON} (.ci/run creates it)")
        return
    code = (
        "import json, sys, yaml, sky\n"
        "cfg = yaml.safe_load(open(sys.argv[1]))\n"
        "t = sky.Task.from_yaml_config(cfg, env_overrides=[('SWARM_NATS_URL', 'nats://n1:4222')],\n"
        "                              secrets_overrides=[('SWARM_NATS_PASSWORD', 'pw')])\n"
        "print(json.dumps({'name': t.name, 'envs': t.envs, 'secrets': sorted(t.secrets), 'run': t.run,\n"
        "  'nodes': t.num_nodes, 'accelerators': sorted(k for r in t.resources for k in r.accelerators),\n"
        "  'images': sorted({i for r in t.resources for i in r.image_id.values()})}))\n"
    )
    r = subprocess.run([str(SKY_PYTHON), "-c", code, str(REPO / "deploy" / "skypilot" / "runner.yaml")],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    task = json.loads(r.stdout.strip().splitlines()[-1])
    assert task["name"] == "swarm-runner" and task["nodes"] == 1
    assert task["accelerators"] == ["H100", "H200"] and task["secrets"] == ["SWARM_NATS_PASSWORD"]
    assert task["envs"]["SWARM_NATS_URL"] == "nats://n1:4222" and task["envs"]["SWARM_NATS_USER"] == "runner"
    dockerfile_base = re.search(r"ARG BASE=(\S+)", (REPO / "Dockerfile").read_text())
    assert dockerfile_base and task["images"] == [f"docker:{dockerfile_base[1]}"]


def test_skypilot_run_script_starts_one_pinned_runner_per_gpu(tmp_path: Path) -> None:
    from tests.test_hardware import fake_smi

    task = yaml.safe_load((REPO / "deploy" / "skypilot" / "runner.yaml").read_text())
    bin_dir = tmp_path / "bin"
    gpus = [
        {"name": "NVIDIA H100 80GB HBM3", "mem": 81559, "uuid": f"GPU-{i}", "mig_mode": "Disabled"}
        for i in range(8)
    ]
    fake_smi(bin_dir, gpus)
    log = tmp_path / "swarm.log"
    (bin_dir / "swarm").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
    )  # a stand-in that records its arguments
    (bin_dir / "swarm").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    r = subprocess.run(["bash", "-c", task["run"]], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = sorted(log.read_text().splitlines())
    assert len(calls) == 8
    parsed = [parse_args(c.split()[1:]) for c in calls]
    assert sorted(c.gpu for c in parsed if c.gpu is not None) == list(range(8))
    assert len({c.state_dir for c in parsed}) == 8 and len({c.runner_id for c in parsed}) == 8


# --------------------------------------------------------------------------------------------------
# the image


def test_dockerfile_installs_the_project_and_checks_the_sandbox_tools() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{BASE\}", text, re.M) and "pip install" in text
    for tool in ("unshare", "setpriv", "pivot_root"):
        assert tool in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".swarm", ".git", "deploy/k8s/creds"} <= set(ignored)  # no local state or credentials
