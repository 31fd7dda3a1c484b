"""Hardware classes, peak FLOP/s and device detection, against a fake ``nvidia-smi`` on PATH.

The fake is a stand-in (no GPU on CI machines): a script that answers ``--query-gpu=<fields>
--format=csv,noheader,nounits`` and ``-L`` the way the real one does, for any requested fields, from a
description of the GPUs, and refuses a field the real one does not know.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.events import check_token
from runner import hardware
from runner.hardware import Device, detect, hw_class_of, list_devices, peak_flops, select_device

FAKE_SMI = r"""
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
spec = json.load(open(os.path.join(here, "gpus.json")))
with open(os.path.join(here, "calls.log"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
if spec.get("fail"):
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
          "latest NVIDIA driver is installed and running.")
    sys.exit(9)
args = sys.argv[1:]
if args == ["-L"]:
    for i, g in enumerate(spec["gpus"]):
        print(f"GPU {i}: {g['name']} (UUID: {g['uuid']})")
        for j, (profile, uuid) in enumerate(g.get("mig", [])):
            print(f"  MIG {profile:<11} Device {j:>2}: (UUID: {uuid})")
    sys.exit(0)
query = [a for a in args if a.startswith("--query-gpu=")]
assert args[-1] in ("--format=csv,noheader,nounits", "--format=csv,noheader") and len(query) == 1, args
units = {} if args[-1].endswith("nounits") else {"memory.total": " MiB", "power.max_limit": " W"}
known = {"index", "name", "memory.total", "uuid", "power.max_limit", "mig.mode.current", "pci.bus_id"}
fields = query[0].split("=", 1)[1].split(",")
for f in fields:
    if f not in known:
        print(f'Field "{f}" is not a valid field to query.')
        sys.exit(2)
for i, g in enumerate(spec["gpus"]):
    row = {"index": str(i), "name": g["name"], "memory.total": str(g["mem"]), "uuid": g["uuid"],
           "power.max_limit": g.get("power", "[N/A]"), "mig.mode.current": g.get("mig_mode", "[N/A]"),
           "pci.bus_id": f"00000000:{i + 16:02X}:00.0"}
    print(", ".join(row[f] + (units.get(f, "") if row[f][:1].isdigit() else "") for f in fields))
"""


def _uuid(i: int, kind: str = "GPU") -> str:
    return f"{kind}-{i:08x}-1111-2222-3333-{i:012x}"


def fake_smi(bin_dir: Path, gpus: list[dict[str, object]], fail: bool = False) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "gpus.json").write_text(json.dumps({"gpus": gpus, "fail": fail}))
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!{sys.executable}\n{FAKE_SMI}")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Put a fake nvidia-smi first on PATH; call it with the GPUs to fake."""
    bin_dir = tmp_path / "bin"

    def make(gpus: list[dict[str, object]], fail: bool = False) -> Path:
        fake_smi(bin_dir, gpus, fail)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        return bin_dir / "calls.log"

    return make


H100_SXM = {"name": "NVIDIA H100 80GB HBM3", "mem": 81559, "power": "700.00", "mig_mode": "Disabled"}
H100_PCIE = {"name": "NVIDIA H100 PCIe", "mem": 81559, "power": "350.00", "mig_mode": "Disabled"}
L40S = {"name": "NVIDIA L40S", "mem": 46068, "power": "350.00"}


def test_eight_gpus_of_two_kinds(smi: Callable[..., Path]) -> None:
    gpus = [dict(L40S if i % 2 else H100_PCIE, uuid=_uuid(i)) for i in range(8)]
    calls = smi(gpus)
    devices = list_devices()
    assert [d.hw_class for d in devices] == ["h100-pcie", "l40s"] * 4
    assert [d.gpu_index for d in devices] == list(range(8))
    # pinned by UUID: CUDA's default order (fastest first) is not nvidia-smi's on a mixed box
    assert [d.cuda_visible_devices for d in devices] == [_uuid(i) for i in range(8)]
    assert devices[0].peak_flops == 756.5e12 and devices[1].peak_flops == 362.05e12
    assert devices[1].memory_mb == 46068 and devices[0].mig_profile == ""
    # one runner per GPU: --gpu 5 is the sixth GPU, an L40S, and its Hardware says so
    hw = detect(gpu=5)
    assert (hw.hw_class, hw.gpu_name, hw.gpu_count, hw.gpu_memory_mb) == ("l40s", "NVIDIA L40S", 1, 46068)
    assert detect(gpu=_uuid(2)).hw_class == "h100-pcie"
    whole = detect()
    assert whole.gpu_count == 8 and whole.hw_class == "h100-pcie"
    assert detect(gpu=5, hw_class="my-class").hw_class == "my-class"
    # no MIG GPU: one query per detection, no `-L`
    assert all(line.startswith("--query-gpu=") for line in calls.read_text().splitlines())


def test_mig_slices_are_devices_with_their_own_class(smi: Callable[..., Path]) -> None:
    slices = [("3g.40gb", _uuid(10, "MIG")), ("2g.20gb", _uuid(11, "MIG")), ("1g.10gb", _uuid(12, "MIG")),
              ("1g.10gb", _uuid(13, "MIG"))]  # fmt: skip
    a100 = {"name": "NVIDIA A100-SXM4-40GB", "mem": 40960, "power": "400.00", "mig_mode": "Enabled",
            "uuid": _uuid(1), "mig": [("1g.5gb", _uuid(20, "MIG"))]}  # fmt: skip
    calls = smi([dict(H100_SXM, uuid=_uuid(0), mig_mode="Enabled", mig=slices), a100,
                 dict(H100_SXM, uuid=_uuid(2))])  # fmt: skip
    devices = list_devices()
    assert [d.hw_class for d in devices] == [
        "h100-sxm-mig-3g-40gb", "h100-sxm-mig-2g-20gb", "h100-sxm-mig-1g-10gb", "h100-sxm-mig-1g-10gb",
        "a100-sxm-40gb-mig-1g-5gb", "h100-sxm",
    ]  # fmt: skip
    assert [d.gpu_index for d in devices] == [0, 0, 0, 0, 1, 2]
    assert [d.mig_profile for d in devices][:5] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb", "1g.5gb"]
    # a slice can only be pinned by its MIG UUID; its memory is the slice's
    assert devices[2].cuda_visible_devices == _uuid(12, "MIG") and devices[0].memory_mb == 40 * 1024
    assert devices[0].peak_flops == pytest.approx(989.5e12 * 3 / 7)
    assert devices[4].peak_flops == pytest.approx(312e12 / 7)
    assert devices[5].cuda_visible_devices == _uuid(2) and devices[5].peak_flops == 989.5e12
    assert detect(gpu=3).hw_class == "h100-sxm-mig-1g-10gb"
    assert detect(gpu=_uuid(20, "MIG")).hw_class == "a100-sxm-40gb-mig-1g-5gb"
    assert "-L" in calls.read_text().splitlines()


def test_mig_mode_without_instances_offers_no_device(smi: Callable[..., Path]) -> None:
    smi([dict(H100_SXM, uuid=_uuid(0), mig_mode="Enabled"), dict(H100_SXM, uuid=_uuid(1))])
    assert [d.uuid for d in list_devices()] == [_uuid(1)]


def test_no_gpu(smi: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    smi([])
    assert list_devices() == []
    hw = detect()
    assert (hw.hw_class, hw.gpu_count, hw.gpu_name) == ("cpu", 0, "")
    assert hw.cpu_count > 0 and hw.memory_mb > 0
    assert detect(threads=3).cpu_count == 3
    # a runner told to use a GPU it cannot see says so, instead of training on the CPU
    with pytest.raises(ValueError, match="no GPU is visible"):
        detect(gpu=0)
    # ... unless it only dispatches (docker executor) and is told its class
    assert detect(gpu=1, hw_class="h100-sxm").hw_class == "h100-sxm"
    # a broken driver: nvidia-smi fails, the machine counts as GPU-less
    smi([H100_SXM], fail=True)
    assert list_devices() == [] and detect().hw_class == "cpu"
    # no nvidia-smi at all
    monkeypatch.setenv("PATH", "/nonexistent")
    assert list_devices() == [] and detect().hw_class == "cpu"


def test_gpu_index_of_the_host_inside_a_one_gpu_container_is_an_error(smi: Callable[..., Path]) -> None:
    smi([dict(H100_SXM, uuid=_uuid(0))])
    assert detect(gpu=0).hw_class == "h100-sxm"
    with pytest.raises(
        ValueError, match=r"--gpu 1: no such device here \(visible: 0: h100-sxm GPU-.*device 0"
    ):
        detect(gpu=1)
    with pytest.raises(ValueError, match="no such device"):
        select_device("GPU-nope", list_devices())


@pytest.mark.parametrize(
    ("name", "extra", "cls"),
    [
        ("NVIDIA H100 80GB HBM3", {}, "h100-sxm"),
        ("NVIDIA H100 PCIe", {}, "h100-pcie"),
        ("NVIDIA H100 NVL", {}, "h100-nvl"),
        ("NVIDIA H100", {"power_limit_w": 700.0}, "h100-sxm"),
        ("NVIDIA H100", {"power_limit_w": 350.0}, "h100-pcie"),
        ("NVIDIA H100", {}, "h100"),
        ("NVIDIA H800", {"power_limit_w": 700.0}, "h800-sxm"),
        ("NVIDIA H200", {}, "h200"),
        ("NVIDIA H200 NVL", {}, "h200-nvl"),
        ("NVIDIA GH200 480GB", {}, "gh200"),
        ("NVIDIA B200", {}, "b200"),
        ("NVIDIA GB200", {}, "gb200"),
        ("NVIDIA A100-SXM4-40GB", {}, "a100-sxm-40gb"),
        ("NVIDIA A100-SXM4-80GB", {}, "a100-sxm-80gb"),
        ("NVIDIA A100-PCIE-40GB", {}, "a100-pcie-40gb"),
        ("NVIDIA A100 80GB PCIe", {}, "a100-pcie-80gb"),
        ("NVIDIA A100", {"memory_mb": 81920, "power_limit_w": 400.0}, "a100-sxm-80gb"),
        ("NVIDIA L40S", {}, "l40s"),
        ("NVIDIA L40", {}, "l40"),
        ("NVIDIA L4", {}, "l4"),
        ("NVIDIA A10G", {}, "a10g"),
        ("NVIDIA A10", {}, "a10"),
        ("Tesla T4", {}, "t4"),
        ("Tesla V100-SXM2-16GB", {}, "v100"),
        ("NVIDIA GeForce RTX 4090", {}, "rtx4090"),
        ("NVIDIA GeForce RTX 3090", {}, "rtx3090"),
        ("NVIDIA GeForce RTX 3090 Ti", {}, "rtx3090ti"),
        ("NVIDIA RTX 6000 Ada Generation", {}, "rtx6000-ada"),
        ("NVIDIA RTX A6000", {}, "rtxa6000"),
        ("Some Future GPU 9000", {}, "some-future-gpu-9000"),
        ("", {}, "cpu"),
    ],
)
def test_hw_class_of(name: str, extra: dict[str, float], cls: str) -> None:
    assert hw_class_of(name, **extra) == cls


def test_peak_flops_per_class() -> None:
    assert peak_flops("h100-sxm") == 989.5e12 and peak_flops("h200") == 989.5e12
    assert peak_flops("h100-pcie") == 756.5e12 and peak_flops("b200") == 2.25e15
    assert {peak_flops(f"a100-{f}-{m}") for f in ("sxm", "pcie") for m in ("40gb", "80gb")} == {312e12}
    assert peak_flops("a30-mig-2g-12gb") == pytest.approx(165e12 / 2)
    for unknown in ("cpu", "t4", "h100", "some-future-gpu-9000", "nope-mig-1g-5gb", "any"):
        assert peak_flops(unknown) is None
    # every class in the table is one hw_class_of can produce (no dead entries), and a valid subject token
    produced = {
        hw_class_of(n)
        for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H800 80GB HBM3", "NVIDIA H800 PCIe",
                  "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA GH200 480GB", "NVIDIA B200", "NVIDIA B100",
                  "NVIDIA GB200", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-40GB",
                  "NVIDIA A100 80GB PCIe", "NVIDIA A30", "NVIDIA A40", "NVIDIA A10", "NVIDIA A10G",
                  "NVIDIA L40S", "NVIDIA L40", "NVIDIA L4", "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090")
    }  # fmt: skip
    assert produced == set(hardware.PEAK_BF16_DENSE_FLOPS)
    assert all(check_token("hardware class", c) for c in produced)
    # a Device's peak is its class's
    assert Device(0, "NVIDIA L4", 23034, "", "l4").peak_flops == 121e12
