"""Every CUDA code path of train.py, run on the CPU: CI catches a mistake in them before a GPU run does.

train.py's ``_gpu_paths_on_cpu`` switch sends the CPU down the branches that otherwise only CUDA takes:
flex attention for the sliding-window layers (compiled, as on CUDA), bf16 autocast, Muon's Newton–Schulz
step in bf16, ``torch.compile`` of the model, MFU from the runner's peak FLOP/s. One subprocess (this file
run as a script) trains the gpu profile's model at a tiny size that way, under a budget shorter than its
own compile, which only finishes with steps counted if the warm-up steps are excluded from the budget.
What no CPU can run (``torch.cuda.synchronize``, CUDA memory statistics) is checked by name: every
``torch.…`` attribute and import train.py mentions must exist in the installed torch.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import prepare

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# the gpu profile's architecture (4 layers, window pattern SSSL: three flex layers, one full) at toy width
TINY_GPU_KNOBS = {
    "GPU_DEPTH": 4,
    "GPU_ASPECT_RATIO": 16,
    "GPU_HEAD_DIM": 32,
    "GPU_DEVICE_BATCH_SIZE": 4,
    "GPU_TOTAL_BATCH_SIZE": 4 * 64 * 2,  # two micro-batches per step: gradient accumulation runs too
}
TINY_ENV = {"SWARM_MAX_SEQ_LEN": "64", "SWARM_EVAL_TOKENS": "2048", "SWARM_BUDGET": "1",
            "SWARM_BUDGET_UNIT": "seconds", "SWARM_PEAK_FLOPS": "1e12"}  # fmt: skip
MARK = "GPU_PATHS_JSON "


# --------------------------------------------------------------------------------------------------
# the driver: `python tests/test_gpu_paths.py` (env from the test), prints the training block and one JSON line


def _components(train: Any) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    out: dict[str, Any] = {}
    q, k, v = (torch.randn(2, 2, 64, 32) for _ in range(3))
    train._gpu_paths_on_cpu = False
    ref = train.sliding_window_attention(q, k, v, 16)  # the CPU branch: masked SDPA
    i = torch.arange(64)
    mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 16)
    out["sdpa_vs_mask"] = float((ref - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max())
    train._gpu_paths_on_cpu = True
    flex = train.sliding_window_attention(q, k, v, 16)  # the CUDA branch: compiled flex attention
    out["flex_vs_sdpa"] = float((flex - ref).abs().max())
    flex_bf16 = train.sliding_window_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 16)
    out["flex_bf16_dtype"] = str(flex_bf16.dtype)
    out["flex_bf16_vs_sdpa"] = float((flex_bf16.float() - ref).abs().max())
    out["flex_cache"] = len(train._flex_cache)

    G = torch.randn(96, 256)
    X16 = train.zeropower_via_newtonschulz5(G, 5)  # bf16 iterations, as on CUDA
    train._gpu_paths_on_cpu = False
    X32 = train.zeropower_via_newtonschulz5(G, 5)
    train._gpu_paths_on_cpu = True
    sv16, sv32 = torch.linalg.svdvals(X16), torch.linalg.svdvals(X32)
    out["ns_dtype"] = str(X16.dtype)
    out["ns_bf16_sv"] = [float(sv16.min()), float(sv16.max())]
    out["ns_f32_sv"] = [float(sv32.min()), float(sv32.max())]
    out["ns_bf16_vs_f32"] = float((X16 - X32).abs().max() / X32.abs().max())
    out["ns_bitwise_equal"] = bool(torch.equal(X16, X32))
    return out


def _autocast(train: Any, vocab: int) -> dict[str, Any]:
    import torch

    config = {"model_config": train.model_config(vocab, 64)}
    model = train.build_model(config)
    model.init_weights()
    with torch.no_grad():  # init leaves every block the identity; attention must matter below
        for block in model.blocks:
            torch.nn.init.normal_(block.attn.c_proj.weight, std=0.05)
        torch.nn.init.normal_(model.lm_head.weight, std=0.05)
    seen: list[str] = []
    model.blocks[0].attn.c_q.register_forward_hook(lambda m, a, o: seen.append(str(o.dtype)))
    idx = torch.randint(0, vocab, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)  # with gradients: the sliding-window layers take SDPA (no flex backward on CPU)
    out = {"autocast_linear_dtype": seen[0], "autocast_logits_dtype": str(logits.dtype),
           "autocast_windows": config["model_config"]["windows"]}  # fmt: skip
    # the compiled model without gradients, as the evaluation of a GPU run: flex inside torch.compile
    train._gpu_paths_on_cpu = False
    with torch.no_grad():
        ref = model(idx)
    train._gpu_paths_on_cpu = True
    before = set(train._flex_cache)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.compile(model, dynamic=False)(idx)
    out["compiled_flex_keys"] = sorted(str(k[:2]) for k in set(train._flex_cache) - before)
    out["compiled_vs_eager"] = float((got - ref).abs().max() / ref.abs().max())
    out["eager_spread"] = float(ref.std())
    return out


def driver() -> None:
    spec = importlib.util.spec_from_file_location("train", REPO / "train.py")
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    for name, value in TINY_GPU_KNOBS.items():
        setattr(train, name, value)
    train._gpu_paths_on_cpu = True
    import prepare

    t0 = time.time()
    results = _components(train)
    t1 = time.time()
    results.update(_autocast(train, prepare.read_meta()["vocab_size"]))
    results["seconds"] = {"components": t1 - t0, "compiled_forward": time.time() - t1}
    print(MARK + json.dumps(results), flush=True)
    train.main()  # torch.compile, flex inside the compiled model, bf16 autocast, warm-up exclusion, MFU


# --------------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One driver run on a small prepared offline dataset (shared with the other harness tests' cache)."""
    import prepare
    from tests.harness_helpers import harness_env, parse_block

    cache = tmp_path_factory.getbasetemp() / "swarm-cache"
    out = tmp_path_factory.mktemp("gpu-paths")
    env = harness_env(cache)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if key.startswith("SWARM_"):
                mp.setenv(key, value)
        for name in ("SWARM_DATA_DIR", "SWARM_VAL_DIR", "SWARM_MODE"):
            mp.delenv(name, raising=False)
        prep = prepare.ensure_prepared()
    env.update(TINY_ENV, SWARM_PROFILE="gpu", SWARM_DATA_DIR=str(prep.data_dir), SWARM_VAL_DIR=str(prep.val_dir),
               SWARM_OUT_DIR=str(out / "out"), OMP_NUM_THREADS="2",
               TORCHINDUCTOR_CACHE_DIR=str(out / "inductor"))  # fmt: skip
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=out, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith(MARK))
    yield {"parts": json.loads(line[len(MARK) :]), "block": parse_block(proc.stdout), "stdout": proc.stdout,
           "stderr": proc.stderr, "out": out / "out", "prep": prep}  # fmt: skip


@pytest.mark.slow
def test_flex_attention_matches_the_masked_sdpa(gpu_run: dict[str, Any]) -> None:
    p = gpu_run["parts"]
    assert p["sdpa_vs_mask"] < 1e-6  # the CPU branch is what it claims
    assert p["flex_vs_sdpa"] < 1e-4 and p["flex_cache"] >= 1  # the CUDA branch ran, compiled, and agrees
    assert p["flex_bf16_dtype"] == "torch.bfloat16" and p["flex_bf16_vs_sdpa"] < 0.05


@pytest.mark.slow
def test_newton_schulz_in_bf16_orthogonalizes(gpu_run: dict[str, Any]) -> None:
    p = gpu_run["parts"]
    assert p["ns_dtype"] == "torch.float32"  # handed back in the gradient's dtype
    assert not p["ns_bitwise_equal"]  # the bf16 iterations really ran (not the float32 ones)
    lo, hi = p["ns_bf16_sv"]
    assert 0.5 < lo <= hi < 1.3, p["ns_bf16_sv"]  # quintic NS: singular values near 1, not the input's
    assert p["ns_bf16_vs_f32"] < 0.05


@pytest.mark.slow
def test_bf16_autocast_runs_the_model_in_bf16(gpu_run: dict[str, Any]) -> None:
    p = gpu_run["parts"]
    assert p["autocast_linear_dtype"] == "torch.bfloat16" and p["autocast_logits_dtype"] == "torch.float32"
    assert p["autocast_windows"] == [32, 32, 32, 64]  # SSSL: sliding-window layers and a full one


@pytest.mark.slow
def test_flex_attention_inside_the_compiled_model(gpu_run: dict[str, Any]) -> None:
    p = gpu_run["parts"]
    assert p["compiled_flex_keys"] == ["(64, 32)"]  # the window-32 layers built their block mask and kernel
    assert p["eager_spread"] > 0.1 and p["compiled_vs_eager"] < 0.05  # bf16 flex ≈ float32 masked SDPA


@pytest.mark.slow
def test_compiled_gpu_profile_trains_and_excludes_warmup_from_the_budget(gpu_run: dict[str, Any]) -> None:
    import prepare

    block, stdout = gpu_run["block"], gpu_run["stdout"]
    assert block["profile"] == "gpu"
    warmup = prepare.PROFILES["gpu"].excluded_warmup_steps
    steps, training, total = (
        int(block["num_steps"]),
        float(block["training_seconds"]),
        float(block["total_seconds"]),
    )
    # the first step compiles (seconds on this CPU); a 1 s budget still counts steps after the warm-up ones
    first = next(line for line in stdout.splitlines() if line.startswith("step 1 |"))
    first_tok_s = int(first.rsplit(" ", 1)[1])
    first_step_s = TINY_GPU_KNOBS["GPU_TOTAL_BATCH_SIZE"] / first_tok_s
    assert first_step_s > float(TINY_ENV["SWARM_BUDGET"]), "the compile should outlast the budget"
    assert steps > warmup, f"{steps} steps: the warm-up steps were counted in the budget"
    assert training >= float(TINY_ENV["SWARM_BUDGET"]) and total > training + first_step_s * 0.9
    assert math.isfinite(float(block["final_loss"])) and 1.0 < float(block["val_bpb"]) < 12.0


@pytest.mark.slow
def test_mfu_uses_the_runners_peak_flops(gpu_run: dict[str, Any]) -> None:
    import torch

    block = gpu_run["block"]
    config = json.loads((gpu_run["out"] / "config.json").read_text())
    mc = config["model_config"]
    n_params = round(float(block["num_params_M"]) * 1e6)
    flops_per_token = (
        6 * (n_params - mc["vocab_size"] * mc["n_embd"]) + 12 * mc["n_layer"] * mc["n_embd"] * 64
    )
    # the warm-up steps count in neither the seconds nor the tokens of MFU
    steps, warmup = int(block["num_steps"]), prepare.PROFILES["gpu"].excluded_warmup_steps
    tokens = float(block["total_tokens_M"]) * 1e6 * (steps - warmup) / steps
    seconds = float(block["training_seconds"])
    expected = 100 * flops_per_token * tokens / seconds / float(TINY_ENV["SWARM_PEAK_FLOPS"])
    assert float(block["mfu_percent"]) == pytest.approx(expected, rel=0.1)
    assert float(block["peak_vram_mb"]) == 0.0 and not torch.cuda.is_available()


# --------------------------------------------------------------------------------------------------
# the OOM classifier on what a GPU run really prints

# PyTorch's caching allocator message, as a torch 2.x traceback ends (copied from a user's report of a real
# run; the figures vary, the wording is c10/cuda/CUDACachingAllocator.cpp's)
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total capacity of 14.57 GiB of which 1.58 GiB "
    "is free. Process 2493055 has 12.02 GiB memory in use. Including non-PyTorch memory, this process has "
    "966.00 MiB memory in use. Of the allocated memory 734.07 MiB is allocated by PyTorch, and 33.93 MiB is "
    "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
    "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
# cudaMalloc outside the caching allocator (CUDA context, cuBLAS workspace): C10_CUDA_CHECK's wording
CUDA_ERROR_OOM = (
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call, so "
    "the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
CUBLAS_OOM = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"


def _traceback_of(raise_stmt: str) -> str:
    """The log a train.py that dies this way leaves: a real traceback from a real interpreter."""
    code = f"import torch\ndef step():\n    {raise_stmt}\nstep()\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    return "step 12 | progress 0.0400 | loss 5.1000 | tok/s 512000\n" + proc.stderr


def test_a_cuda_out_of_memory_traceback_is_oom() -> None:
    from runner.contract import looks_like_oom, traceback_tail

    log = _traceback_of(f"raise torch.OutOfMemoryError({CUDA_OOM!r})")
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in log
    assert looks_like_oom(traceback_tail(log, 4000))


def test_a_real_cpu_allocation_failure_is_oom() -> None:
    from runner.contract import looks_like_oom

    log = _traceback_of("torch.empty(1 << 50, dtype=torch.uint8)")  # 1 PiB: the allocator refuses
    assert "DefaultCPUAllocator" in log and looks_like_oom(log)


@pytest.mark.parametrize("message", [CUDA_ERROR_OOM, CUBLAS_OOM], ids=["cuda-error", "cublas-alloc"])
def test_other_cuda_allocation_failures_are_oom(message: str) -> None:
    from runner.contract import looks_like_oom

    assert looks_like_oom(_traceback_of(f"raise torch.AcceleratorError({message!r})"))


def test_other_crashes_are_not_oom() -> None:
    from runner.contract import looks_like_oom

    shapes = _traceback_of("torch.zeros(2, 3) @ torch.zeros(2, 3)")
    triton = (
        "triton.runtime.errors.OutOfResources: out of resource: shared memory, Required: 131072, Hardware "
        "limit: 101376. Reducing block sizes or `num_stages` may help."
    )  # a kernel that does not fit: the experiment's configuration, not the memory of the device
    assert "mat1 and mat2 shapes cannot be multiplied" in shapes
    assert not looks_like_oom(shapes) and not looks_like_oom(triton)


# --------------------------------------------------------------------------------------------------
# what only CUDA can run: checked by name


def _torch_references(source: str) -> list[tuple[int, str]]:
    """Every dotted ``torch.…`` (or alias) attribute and every ``from torch… import name`` in a source."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    refs: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "torch":
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            for a in node.names:
                refs.append((node.lineno, f"{node.module}.{a.name}"))
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            parts: list[str] = []
            cur: ast.expr = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in aliases:
                refs.append((node.lineno, ".".join([aliases[cur.id], *reversed(parts)])))
        for child in ast.iter_child_nodes(node):
            child._parent = node  # type: ignore[attr-defined]
    return refs


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=1):
        if hasattr(obj, name):
            obj = getattr(obj, name)
            continue
        try:
            obj = importlib.import_module(".".join(parts[: i + 1]))
        except ImportError:
            return False
    return True


def missing_torch_names(source: str) -> list[str]:
    return [f"line {line}: {name}" for line, name in _torch_references(source) if not _resolves(name)]


def test_every_torch_name_in_train_py_exists() -> None:
    source = (REPO / "train.py").read_text()
    refs = {name for _, name in _torch_references(source)}
    # the CUDA-only calls are among what is checked
    assert {"torch.cuda.synchronize", "torch.cuda.max_memory_allocated", "torch.compile",
            "torch.nn.attention.flex_attention.create_block_mask"} <= refs  # fmt: skip
    assert missing_torch_names(source) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("torch.cuda.synchronize()", "torch.cuda.synchronise()"),
        ("torch.cuda.max_memory_allocated()", "torch.cuda.max_memory_alocated()"),
        ("import create_block_mask, flex_attention", "import create_block_mask, flex_atention"),
        ('torch.set_float32_matmul_precision("high")', 'torch.set_float32_matmul_precison("high")'),
    ],
)
def test_a_typo_in_a_cuda_only_line_is_caught(old: str, new: str) -> None:
    source = (REPO / "train.py").read_text()
    assert old in source
    assert missing_torch_names(source.replace(old, new, 1)), f"{new} was not caught"


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    driver()
