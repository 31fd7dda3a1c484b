"""What this runner executes on: GPU model and memory (nvidia-smi, no torch import needed), CPU count,
memory, and the hardware class results are compared within."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from importlib import metadata

from bus.events import Hardware

_KNOWN = (
    "h200",
    "h100",
    "h800",
    "gh200",
    "b200",
    "b100",
    "a100",
    "a10g",
    "a10",
    "l40s",
    "l40",
    "l4",
    "v100",
    "t4",
)


def hw_class_of(gpu_name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` → ``h100``; unknown names become a slug; no GPU → ``cpu``."""
    if not gpu_name:
        return "cpu"
    low = gpu_name.lower()
    for k in _KNOWN:
        if re.search(rf"(?<![a-z0-9]){k}(?![a-z0-9])", low):
            return k
    m = re.search(r"(rtx\s*)?(\d{4})", low)
    if m:
        return ("rtx" if m.group(1) else "gpu") + m.group(2)
    slug = re.sub(r"[^a-z0-9]+", "-", low.replace("nvidia", "")).strip("-")
    return slug[:32] or "gpu"


def _gpus() -> list[tuple[str, int]]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mem = line.rpartition(",")
        try:
            gpus.append((name.strip(), int(float(mem.strip()))))
        except ValueError:
            continue
    return gpus


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return ""


def detect(gpu: int | None = None, hw_class: str = "", threads: int | None = None) -> Hardware:
    """This machine as a :class:`bus.events.Hardware`; ``gpu`` picks one GPU of several."""
    gpus = _gpus()
    if gpu is not None and gpus:
        gpus = [gpus[gpu]] if gpu < len(gpus) else []
    name, mem = gpus[0] if gpus else ("", 0)
    return Hardware(
        hw_class=hw_class or hw_class_of(name),
        gpu_name=name,
        gpu_count=len(gpus),
        gpu_memory_mb=mem,
        cpu_count=threads or os.cpu_count() or 0,
        memory_mb=_memory_mb(),
        host=socket.gethostname(),
        torch_version=_version("torch"),
    )
