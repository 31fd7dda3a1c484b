"""Deployment files: compose.yaml is valid for docker-compose, the SkyPilot task and the Dockerfile say
what the README promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import skip_or_fail

REPO = Path(__file__).resolve().parents[1]


def test_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        skip_or_fail("docker-compose is not installed (apt-get install docker-compose)")
        return
    r = subprocess.run([exe, "-f", str(REPO / "compose.yaml"), "config"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = yaml.safe_load(r.stdout)
    services = config["services"]
    assert {"nats", "ledger", "runner-gpu0", "agents"} <= set(services)
    gpu = services["runner-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["device_ids"] == ["0"]
    assert "-js" in services["nats"]["command"]
    assert services["ledger"]["environment"]["SWARM_NATS_URL"] == "nats://nats:4222"


def test_skypilot_task_starts_one_runner_per_gpu() -> None:
    task = yaml.safe_load((REPO / "deploy" / "skypilot" / "runner.yaml").read_text())
    assert "accelerators" in task["resources"]
    assert "swarm runner --gpu" in task["run"] and "SWARM_NATS_URL" in task["envs"]


def test_dockerfile_installs_the_project() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith(("FROM", "#", "ARG")) and "pip install" in text
