"""What this runner executes on: its GPU devices (from ``nvidia-smi``, no torch import needed), CPU count,
memory, the hardware class results are compared within, and each class's peak dense bf16 FLOP/s for MFU.

Classes name what changes a result: the chip *and* its form factor (an H100 PCIe runs at ~3/4 of an H100
SXM), the A100's memory size, and a MIG slice's share of the chip (``h100-sxm-mig-1g-10gb``). One runner
pins one device: a whole GPU, or a MIG slice, by its UUID in ``CUDA_VISIBLE_DEVICES``
(:attr:`Device.cuda_visible_devices`), because CUDA's own device order need not be nvidia-smi's.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from importlib import metadata
from typing import NamedTuple

from bus.events import Hardware

log = logging.getLogger("swarm.runner.hardware")

# Peak dense (no 2:4 sparsity) bf16 tensor-core FLOP/s with fp32 accumulation, per class: MFU's denominator.
# Vendor datasheets print the sparse figure (marked *); the dense one is half of it.
PEAK_BF16_DENSE_FLOPS: dict[str, float] = {
    # NVIDIA H100 Tensor Core GPU datasheet: BF16 1,979 TFLOPS* (SXM), 1,513* (PCIe), 1,671* (NVL)
    "h100-sxm": 989.5e12,
    "h100-pcie": 756.5e12,
    "h100-nvl": 835.5e12,
    # NVIDIA H800 datasheet: the H100's figures (SXM 1,979*, PCIe 1,513*)
    "h800-sxm": 989.5e12,
    "h800-pcie": 756.5e12,
    # NVIDIA H200 Tensor Core GPU datasheet: BF16 1,979 TFLOPS* (H200 SXM), 1,671* (H200 NVL)
    "h200": 989.5e12,
    "h200-nvl": 835.5e12,
    # NVIDIA GH200 Grace Hopper Superchip datasheet: BF16 1,979 TFLOPS* (its Hopper GPU)
    "gh200": 989.5e12,
    # NVIDIA HGX B200 / B100 specifications: FP16/BF16 36 PFLOPS* / 28 PFLOPS* per 8 GPUs
    "b200": 2.25e15,
    "b100": 1.75e15,
    # NVIDIA GB200 NVL72 specifications: FP16/BF16 360 PFLOPS* per 72 GPUs
    "gb200": 2.5e15,
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS (624*) for SXM and PCIe, 40 and 80 GB
    "a100-sxm-40gb": 312e12,
    "a100-sxm-80gb": 312e12,
    "a100-pcie-40gb": 312e12,
    "a100-pcie-80gb": 312e12,
    # NVIDIA A30 datasheet: BF16 165 TFLOPS (330*); A40 datasheet: BF16 149.7 TFLOPS (299.4*)
    "a30": 165e12,
    "a40": 149.7e12,
    # NVIDIA A10 datasheet: BF16 125 TFLOPS (250*). The A10G (AWS G5) has no NVIDIA datasheet: it is the
    # same GA102 chip at about the same clocks, so the A10's figure stands in (an upper bound)
    "a10": 125e12,
    "a10g": 125e12,
    # NVIDIA L40S datasheet: BF16 362.05 TFLOPS (733*); L40: 181.05 (362.1*); L4: 242* TFLOPS
    "l40s": 362.05e12,
    "l40": 181.05e12,
    "l4": 121e12,
    # NVIDIA Ada GPU architecture whitepaper (RTX 4090): BF16 with FP32 accumulate 165.2 TFLOPS (330.4*);
    # NVIDIA Ampere GA102 GPU architecture whitepaper (RTX 3090): 71 TFLOPS (142*)
    "rtx4090": 165.2e12,
    "rtx3090": 71e12,
    # (T4, V100 and older have no bf16 tensor cores: no entry, so MFU is reported as unknown there)
}

# MIG: a slice of g compute slices gets g/N of the chip (N = 7 on A100/H100/H200/B200, 4 on the A30)
_MIG_SLICES = {"a30": 4}
_MIG_RE = re.compile(r"^(?P<base>.+)-mig-(?P<g>\d+)g-")


def peak_flops(hw_class: str) -> float | None:
    """Peak dense bf16 FLOP/s of a hardware class (``h100-sxm`` → 989.5e12), or None when unknown (cpu,
    a GPU without bf16 tensor cores, a name not in :data:`PEAK_BF16_DENSE_FLOPS`). A MIG slice
    (``a100-sxm-40gb-mig-3g-20gb``) gets its share of the whole chip."""
    m = _MIG_RE.match(hw_class)
    if m is None:
        return PEAK_BF16_DENSE_FLOPS.get(hw_class)
    whole = PEAK_BF16_DENSE_FLOPS.get(m["base"])
    if whole is None:
        return None
    return whole * int(m["g"]) / _MIG_SLICES.get(m["base"], 7)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _has(low: str, word: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){word}(?![a-z0-9])", low) is not None


def hw_class_of(gpu_name: str, mig_profile: str = "", memory_mb: int = 0, power_limit_w: float = 0.0) -> str:
    """The hardware class of a GPU as nvidia-smi names it: ``NVIDIA H100 80GB HBM3`` → ``h100-sxm``,
    ``NVIDIA H100 PCIe`` → ``h100-pcie``, ``NVIDIA A100-SXM4-40GB`` → ``a100-sxm-40gb``, a MIG slice
    ``1g.10gb`` of an H100 SXM → ``h100-sxm-mig-1g-10gb``; no GPU → ``cpu``; an unknown name → its slug.

    ``memory_mb`` and ``power_limit_w`` (nvidia-smi's memory.total, power.max_limit) settle what the
    name leaves open: an A100's memory size, the form factor of an H100/A100 that does not say it.
    """
    if not gpu_name:
        return "cpu"
    low = re.sub(r"\b(nvidia|geforce|tesla)\b", " ", gpu_name.lower())
    low = re.sub(r"\s+", " ", low).strip()
    form = "nvl" if "nvl" in low else "pcie" if ("pcie" in low or "hbm2e" in low) else ""
    if not form and ("sxm" in low or "hbm3" in low):
        form = "sxm"
    if not form and power_limit_w:
        form = "sxm" if power_limit_w >= 380 else "pcie"  # SXM parts: 400-700 W; PCIe cards: 250-350 W
    cls = ""
    for chip in ("gh200", "gb200", "b200", "b100"):
        if _has(low, chip):
            cls = chip
    if not cls and _has(low, "h200"):
        cls = "h200-nvl" if form == "nvl" else "h200"
    elif not cls and (_has(low, "h100") or _has(low, "h800")):
        chip = "h100" if _has(low, "h100") else "h800"
        cls = f"{chip}-{form}" if form else chip
    elif not cls and _has(low, "a100"):
        m = re.search(r"(\d+)\s*gb", low)
        gb = int(m.group(1)) if m else round(memory_mb / 1024)
        size = "80gb" if gb > 60 else "40gb"
        cls = f"a100-{form or 'sxm'}-{size}" if form != "nvl" else f"a100-pcie-{size}"
    if not cls:
        for chip in (
            "l40s",
            "l40",
            "l4",
            "a10g",
            "a10",
            "a30",
            "a40",
            "a16",
            "a2",
            "t4",
            "v100",
            "p100",
            "h20",
        ):
            if _has(low, chip):
                cls = chip
                break
    if not cls:
        m = re.search(r"rtx\s*(a?\d{4})\s*(ti|super)?", low)
        if m:
            cls = "rtx" + m.group(1) + (m.group(2) or "")
            if _has(low, "ada"):
                cls += "-ada"
    cls = cls or _slug(low)[:40] or "gpu"
    if mig_profile:
        cls = f"{cls}-mig-{_slug(mig_profile)}"
    return cls[:64]


@dataclass(frozen=True)
class Device:
    """One device a runner can own: a whole GPU, or one MIG slice of a GPU in MIG mode."""

    gpu_index: int  # nvidia-smi's index of the GPU (of the parent GPU for a MIG slice)
    name: str
    memory_mb: int
    uuid: str  # GPU-... of a whole GPU, MIG-... of a slice ("" when nvidia-smi gave none)
    hw_class: str
    mig_profile: str = ""  # "1g.10gb" for a slice

    @property
    def cuda_visible_devices(self) -> str:
        """What pins a process to this device: its UUID (CUDA's own order may differ from nvidia-smi's, and
        a MIG slice can only be selected by UUID); the index when no UUID is known."""
        return self.uuid or str(self.gpu_index)

    @property
    def peak_flops(self) -> float | None:
        return peak_flops(self.hw_class)


_QUERY = "index,name,memory.total,uuid,power.max_limit,mig.mode.current"
_MIG_LINE = re.compile(r"^\s+MIG\s+(?P<profile>\S+)\s+Device\s+\d+:\s*\(UUID:\s*(?P<uuid>[^)\s]+)\)")
_GPU_LINE = re.compile(r"^GPU\s+(?P<index>\d+):")


class _Gpu(NamedTuple):
    gpu_index: int
    name: str
    memory_mb: int
    uuid: str
    power_w: float
    mig: bool


def _smi(args: list[str]) -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        return subprocess.run([smi, *args], capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("nvidia-smi %s failed: %s", " ".join(args), e)
        return None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return 0.0


def list_devices() -> list[Device]:
    """Every device on this machine, in nvidia-smi's order: whole GPUs, and for a GPU in MIG mode its
    slices (``nvidia-smi -L``) instead of it. Empty when there is no nvidia-smi or it lists no GPU."""
    out = _smi([f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"])
    if out is None:
        return []
    gpus: list[_Gpu] = []
    for line in out.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 6 or not fields[0].isdigit():
            log.warning("nvidia-smi: unreadable line %r", line)
            continue
        idx, name, mem, uuid, power, mig = fields
        gpus.append(_Gpu(int(idx), name, int(_number(mem)), uuid if uuid.startswith("GPU-") else "",
                         _number(power), mig.lower() == "enabled"))  # fmt: skip
    slices: dict[int, list[tuple[str, str]]] = {}
    if any(g[5] for g in gpus):
        current = -1
        for line in (_smi(["-L"]) or "").splitlines():
            if m := _GPU_LINE.match(line):
                current = int(m["index"])
            elif (m := _MIG_LINE.match(line)) and current >= 0:
                slices.setdefault(current, []).append((m["profile"], m["uuid"]))
    devices: list[Device] = []
    for g in gpus:
        if not g.mig:
            devices.append(
                Device(
                    g.gpu_index, g.name, g.memory_mb, g.uuid, hw_class_of(g.name, "", g.memory_mb, g.power_w)
                )
            )
            continue
        if not slices.get(g.gpu_index):
            log.warning(
                "GPU %d (%s) is in MIG mode without compute instances: no device to run on",
                g.gpu_index,
                g.name,
            )
        for profile, mig_uuid in slices.get(g.gpu_index, []):
            m = re.search(r"(\d+)gb", profile)
            slice_mb = int(m.group(1)) * 1024 if m else 0
            cls = hw_class_of(g.name, profile, g.memory_mb, g.power_w)
            devices.append(Device(g.gpu_index, g.name, slice_mb, mig_uuid, cls, profile))
    return devices


def select_device(gpu: int | str, devices: list[Device]) -> Device:
    """The device ``--gpu`` names: a position in :func:`list_devices` (0, 1, ...) or a GPU-/MIG- UUID.

    Raises ValueError, saying what is visible, when there is no such device: inside a container that is
    given one GPU, that GPU is device 0 whatever its index on the host.
    """
    if isinstance(gpu, str) and not gpu.isdigit():
        for d in devices:
            if d.uuid == gpu:
                return d
    else:
        i = int(gpu)
        if 0 <= i < len(devices):
            return devices[i]
    seen = ", ".join(f"{i}: {d.hw_class} {d.uuid}".strip() for i, d in enumerate(devices)) or "none"
    raise ValueError(
        f"--gpu {gpu}: no such device here (visible: {seen}). Inside a container or pod given one GPU, that "
        "GPU is device 0; on a bare machine use a position from `nvidia-smi -L` or a GPU-/MIG- UUID"
    )


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


def detect(gpu: int | str | None = None, hw_class: str = "", threads: int | None = None) -> Hardware:
    """This machine as a :class:`bus.events.Hardware`; ``gpu`` picks one device (see :func:`select_device`).

    ``hw_class`` overrides the detected class. A ``gpu`` that names no visible device is an error, except
    where no GPU is visible at all and ``hw_class`` is given (a runner that only dispatches to containers
    which get the GPU themselves).
    """
    devices = list_devices()
    if gpu is not None and not devices and not hw_class:
        raise ValueError(
            f"--gpu {gpu}: no GPU is visible here (nvidia-smi is missing or lists none); give the container "
            "or pod its GPU, or pass --hw-class when the runner itself needs none"
        )
    if gpu is not None and devices:
        devices = [select_device(gpu, devices)]
    first = devices[0] if devices else None
    return Hardware(
        hw_class=hw_class or (first.hw_class if first else "cpu"),
        gpu_name=first.name if first else "",
        gpu_count=len(devices),
        gpu_memory_mb=first.memory_mb if first else 0,
        cpu_count=threads or os.cpu_count() or 0,
        memory_mb=_memory_mb(),
        host=socket.gethostname(),
        torch_version=_version("torch"),
    )
