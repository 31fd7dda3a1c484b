"""The simulated executor's response surface: what a train.py scores, how long it runs, how much memory it
takes and how it fails, per hardware class and training budget. Pure and deterministic: the same
(train.py, class, budget) gives the same :class:`Run`; the same (train.py, class, budget, seed) the same
noisy val_bpb. No I/O, no clock: :mod:`runner.executors.simulated` turns a :class:`Run` into sleeps and
log lines.

Calibration (the seed articles; ``tests/test_landscape.py`` asserts each anchor):

* the repo's train.py (its GPU_* profile: 8 layers, ASPECT_RATIO 80 → model_dim 640, 2**19 tokens per
  step) scores **1.003 on an H100 with a 300 s budget** (1190 steps of 252 ms); its CPU_* profile 2.437
  on ``cpu`` at 30 s (the README's measured CPU baseline);
* **H200 runs ~9 % more steps** (speed 1.09) and so scores **~0.005 lower** for the same config: the data
  term falls 0.058 per unit of ln(tokens);
* **width matters most**: model_dim = ceil(DEPTH·ASPECT_RATIO / HEAD_DIM)·HEAD_DIM, so ASPECT_RATIO moves in
  steps of 128 dims at depth 8. A capacity term (falls with parameters) against the data term (fewer steps
  for a bigger model: 207 ms/step at dim 384, 283 ms at 768, the seed's ~1450 and ~1060 steps) puts the
  **sweet spot at AR 96 (dim 768) on an H100 at 300 s**; it moves up with more steps (a longer budget,
  faster hardware) and down with fewer. The best single-knob change from the baseline is a width change;
* **rankings flip between classes**: FINAL_LR_FRAC's optimum grows with the steps a run gets (0.035 at
  the baseline's H100 steps, ~0.056 on H200), so 0.03 ties or beats 0.05 on H100 and loses on H200;
  DEVICE_BATCH_SIZE 128 is faster but needs ~98 GB: out of memory on H100 (80 GB), a win on H200 (141 GB);
* **interactions**: MATRIX_LR's optimum grows with √(tokens per step) and shrinks with width (so halving
  TOTAL_BATCH_SIZE wants a lower LR), weight decay acts through LR·WD, warm-up and GRAD_CLIP move the
  divergence line of the LRs, FINAL_LR_FRAC and the width sweet spot depend on the steps;
* **OOM** above each class's memory line (activations ∝ DEVICE_BATCH_SIZE·dim·depth), **crash regions**
  (a non-positive size, an odd HEAD_DIM, a malformed tuple, an empty WINDOW_PATTERN: exit 1 with a
  traceback), **divergence** (an LR past its line, betas or momentum ≥ 1: ``FAIL: nan loss``);
* **noise** σ per class (h100 0.0012, h200 0.0009, a100 0.0015, cpu 0.035);
* **reachable best ≈ 0.97**: every knob at its optimum gives ~0.976 on H100 and ~0.971 on H200; a few
  lucky code edits go a little further.

Unknown edits: a top-level statement of train.py (function, class, import; knob lines aside) that differs
from the reference train.py (``reference_source``, the runner's baseline) gets a deterministic effect
seeded by the hash of its normalised AST: 42 % neutral (|Δ| < 0.0003), 37 % worse (+0.0005 plus an
exponential of mean 0.003), 13 % better (−0.0003 minus an exponential of mean 0.0012, at most −0.005),
5 % crash, 3 % diverge; 20 % also change the step time (−6 % to +15 %). Effects of separate statements add
up. A source sharing under half of the reference's statements (a test's stand-in program) and any source
when there is no reference get no code effect. Knobs the model does not know get a bounded, hash-seeded
bump around a hash-seeded optimum (at most 0.0035); the other profile's twins (CPU_* on a GPU) are not
read, exactly as train.py does not read them.

Classes: ``cpu`` uses the CPU_* profile; every other class the GPU_* profile, with the speed, memory line
and σ of :data:`CLASSES` (an unknown class is an H100 under its own name). On the CPU profile every
quality effect is 20× the GPU one (a 4M-parameter model at 30 s is far from converged).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from runner.executors.landscape_code import (
    CodeEffect,
    Failure,
    RunStatus,
    code_effect,
    code_statements,
    read_knobs,
    scan,
    uniform,
    unknown_knob,
)


@dataclass(frozen=True)
class HwClass:
    """A hardware class as the landscape sees it: throughput (relative to the profile's reference class),
    the memory line (GB) and the σ of val_bpb between identical runs."""

    name: str
    profile: str  # gpu | cpu
    speed: float
    memory_gb: float
    sigma: float


CLASSES: dict[str, HwClass] = {
    "h100": HwClass("h100", "gpu", 1.00, 80.0, 0.0012),
    "h200": HwClass("h200", "gpu", 1.09, 141.0, 0.0009),  # the seed: ~9 % more steps, 0.005 lower
    "a100": HwClass("a100", "gpu", 0.55, 80.0, 0.0015),
    "cpu": HwClass("cpu", "cpu", 1.00, 24.0, 0.035),  # README: σ 0.035 between identical 30 s CPU runs
}


def hw_class(name: str) -> HwClass:
    """The class ``name``; an unknown GPU class is an H100 under its own name."""
    spec = CLASSES.get(name)
    if spec is not None:
        return spec
    h = CLASSES["h100"]
    return HwClass(name or "h100", h.profile, h.speed, h.memory_gb, h.sigma)


@dataclass(frozen=True)
class Profile:
    """One train.py profile (GPU_* or CPU_* knobs) and its calibration constants (seconds, GB, bpb)."""

    name: str
    reference: dict[str, Any]  # knob values (base names) of the calibration train.py
    seq_len: int
    vocab: int
    anchor_class: str
    anchor_budget: float
    anchor_val: float
    sweet_dim: int  # the width sweet spot at depth 8 on the anchor class and budget (capacity vs steps)
    scale: float  # quality effects relative to the GPU profile
    t_base: float  # s/step at the reference batch: token-proportional, independent of model size
    t_model: float  # s/step at the reference batch: token-proportional, ∝ non-embedding params
    t_attn: float  # s/step at the reference batch: attention, ∝ layers·dim·window
    t_optim: float  # s/step: the optimizer (Muon's Newton-Schulz), ∝ params, independent of the batch
    no_compile: float  # token-part slowdown with COMPILE = False (the CPU profile never compiles)
    mem_fixed_gb: float
    mem_act_gb: float  # activations at the reference device batch, besides the ∝-dim part
    mem_per_dim_gb: float  # activations per unit of dim·depth/8 at the reference device batch
    startup_s: float
    compile_s: float
    eval_s: float
    lr_mult: float  # optima of the LRs relative to the GPU profile's (tiny models like larger LRs)
    lr_dim: float  # the dim at which MATRIX_LR's optimum is lr_mult·0.05 (at the optimal batch)

    @property
    def ref_batch(self) -> int:
        return int(self.reference["TOTAL_BATCH_SIZE"])

    @cached_property
    def capacity_k(self) -> float:
        """The capacity term's amplitude that puts the width sweet spot at ``sweet_dim`` (reference depth)."""
        cls = hw_class(self.anchor_class)
        ref = self.reference

        def slope(k: float) -> float:
            def f(dim: float) -> float:
                g = _geometry(dict(ref, DIM=dim), self)
                t = _step_seconds(g, ref, self, cls, 1.0)
                tokens = int(self.anchor_budget / t) * g.batch
                return _capacity(g.params_rel, self, k) + _data(tokens, self)

            return f(self.sweet_dim * 1.01) - f(self.sweet_dim / 1.01)

        lo, hi = 0.0, 10.0
        for _ in range(80):  # bisection: the slope grows (capacity pulls harder) as k falls
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
        return (lo + hi) / 2

    @cached_property
    def anchor_tokens(self) -> int:
        """Tokens the reference trains on in the anchor budget on the anchor class."""
        g = self.ref_geometry
        return (
            int(self.anchor_budget / _step_seconds(g, {}, self, hw_class(self.anchor_class), 1.0)) * g.batch
        )

    @cached_property
    def ref_geometry(self) -> _Geometry:
        return _geometry({}, self, params_ref=1.0)

    @cached_property
    def ref_terms(self) -> dict[str, float]:
        """The reference's raw terms on the anchor class and budget: what every score is relative to."""
        g = self.ref_geometry
        steps = int(self.anchor_budget / _step_seconds(g, {}, self, hw_class(self.anchor_class), 1.0))
        return _raw_terms({}, g, steps * g.batch, self, CodeEffect())


_COMMON: dict[str, Any] = {
    "MLP_RATIO": 4, "SOFTCAP": 15.0, "SHORT_WINDOW_FRAC": 0.5, "ROPE_BASE": 10000.0,
    "MATRIX_LR": 0.04, "EMBEDDING_LR": 0.6, "UNEMBEDDING_LR": 0.004, "SCALAR_LR": 0.5, "WEIGHT_DECAY": 0.0,
    "ADAM_BETAS": (0.8, 0.95), "MUON_MOMENTUM": 0.95, "NS_STEPS": 5, "WARMUP_RATIO": 0.0,
    "WARMDOWN_RATIO": 0.5, "FINAL_LR_FRAC": 0.0, "GRAD_CLIP": 0.0, "COMPILE": True, "LOSS_EXPLODE": 20.0,
    "LOG_INTERVAL": 1.0,
}  # fmt: skip

# fmt: off
PROFILES: dict[str, Profile] = {
    # the seed's H100: 207 ms/step at dim 384, 283 ms at dim 768 (2**19 tokens/step, depth 8)
    "gpu": Profile(
        name="gpu",
        reference={**_COMMON, "DEPTH": 8, "ASPECT_RATIO": 80, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL",
                   "DEVICE_BATCH_SIZE": 64, "TOTAL_BATCH_SIZE": 2**19},
        seq_len=2048, vocab=8192, anchor_class="h100", anchor_budget=300.0, anchor_val=1.003, sweet_dim=768,
        scale=1.0, t_base=0.1757, t_model=0.057, t_attn=0.015, t_optim=0.005, no_compile=1.3,
        mem_fixed_gb=6.0, mem_act_gb=14.0, mem_per_dim_gb=0.0495, startup_s=8.0, compile_s=25.0, eval_s=10.0,
        lr_mult=1.0, lr_dim=768.0,
    ),
    # this machine's CPU runs: ~0.6 s per 2**11-token step, 2.437 at 30 s (README)
    "cpu": Profile(
        name="cpu",
        reference={**_COMMON, "DEPTH": 4, "ASPECT_RATIO": 64, "HEAD_DIM": 64, "WINDOW_PATTERN": "L",
                   "DEVICE_BATCH_SIZE": 8, "TOTAL_BATCH_SIZE": 2**11},
        seq_len=256, vocab=2048, anchor_class="cpu", anchor_budget=30.0, anchor_val=2.437, sweet_dim=320,
        scale=10.0, t_base=0.12, t_model=0.40, t_attn=0.05, t_optim=0.05, no_compile=1.0,
        mem_fixed_gb=0.5, mem_act_gb=0.2, mem_per_dim_gb=0.002, startup_s=3.0, compile_s=0.0, eval_s=3.0,
        lr_mult=1.5, lr_dim=256.0,
    ),
}
# fmt: on

# data term: D·((T/T_anchor)^-β − 1)/β; slope −D per unit of ln(tokens) at the anchor (the H200 anchor)
DATA_SLOPE, DATA_BETA = 0.086, 0.28
CAPACITY_EXPONENT = 1.75  # capacity ∝ params^-1.75 (dim^-3.5 at fixed depth)
CAPACITY_CAP = 0.15  # the most a too-small model loses (GPU units)


# --------------------------------------------------------------------------------------------------
# knobs


def profile_knobs(knobs: dict[str, Any], profile: str) -> dict[str, Any]:
    """Base-name knobs as train.py reads them on ``profile``: ``GPU_DEPTH`` → ``DEPTH`` on gpu (a prefixed
    twin wins over a bare name), the other profile's twins dropped, ``N_LAYER`` read as ``DEPTH``."""
    own, other = ("CPU_", "GPU_") if profile == "cpu" else ("GPU_", "CPU_")
    out: dict[str, Any] = {}
    for name, v in knobs.items():
        if not name.startswith((own, other)):
            out["DEPTH" if name == "N_LAYER" else name] = v
    for name, v in knobs.items():
        if name.startswith(own):
            out[name[len(own) :]] = v
    for alias in ("MODEL_DIM", "N_EMBD"):
        if alias in out:
            out["DIM"] = out.pop(alias)
    return out


def _number(k: dict[str, Any], name: str, *, positive: bool = True, integer: bool = False) -> float:
    v = k[name]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Failure("crash", f"TypeError: {name} = {v!r} is not a number")
    if integer and not float(v).is_integer():
        raise Failure("crash", f"TypeError: {name} = {v!r} must be an integer")
    if not math.isfinite(v):
        raise Failure("nan", f"{name} = {v}: FAIL: nan loss at step 0")
    if positive and v <= 0:
        raise Failure("crash", f"ValueError: {name} = {v!r} must be positive")
    return float(v)


@dataclass(frozen=True)
class _Geometry:
    depth: int
    dim: int
    head_dim: int
    mlp: float
    window_frac: float  # mean attention window / seq_len over layers
    s_layers: float  # fraction of layers with a short window
    batch: int  # tokens per optimizer step
    device_batch: int
    params_rel: float  # non-embedding params / the reference's
    params: int  # total


def _geometry(k: dict[str, Any], p: Profile, params_ref: float | None = None) -> _Geometry:
    k = {**p.reference, **k}
    depth = int(_number(k, "DEPTH", integer=True))
    head_dim = int(_number(k, "HEAD_DIM", integer=True))
    if head_dim % 2:
        raise Failure("crash", f"RuntimeError: HEAD_DIM = {head_dim} is odd: rotary embeddings need pairs")
    if "DIM" in k:
        dim = int(_number(k, "DIM", integer=False))
    else:
        dim = -(-int(depth * _number(k, "ASPECT_RATIO")) // head_dim) * head_dim
    dim = max(head_dim, dim)
    mlp = _number(k, "MLP_RATIO")
    pattern = k["WINDOW_PATTERN"]
    if not isinstance(pattern, str) or not pattern:
        raise Failure("crash", f"ZeroDivisionError: WINDOW_PATTERN = {pattern!r} (integer modulo by zero)")
    short = min(1.0, _number(k, "SHORT_WINDOW_FRAC"))
    longs = [pattern[i % len(pattern)] == "L" or i == depth - 1 for i in range(depth)]
    window_frac = sum(1.0 if lg else short for lg in longs) / depth
    device_batch = int(_number(k, "DEVICE_BATCH_SIZE", integer=True))
    batch = max(int(_number(k, "TOTAL_BATCH_SIZE", integer=True)), device_batch * p.seq_len)
    n = depth * dim * dim * (4 + 2 * mlp)
    # params relative to the reference's non-embedding params (params_ref given: the reference itself)
    n_ref = n / params_ref if params_ref is not None else _non_embedding(p.ref_geometry)
    return _Geometry(depth, dim, head_dim, mlp, window_frac, 1.0 - sum(longs) / depth, batch, device_batch,
                     n / n_ref, int(n + 2 * p.vocab * dim))  # fmt: skip


def _non_embedding(g: _Geometry) -> float:
    return g.depth * g.dim * g.dim * (4 + 2 * g.mlp)


def _step_seconds(g: _Geometry, k: dict[str, Any], p: Profile, cls: HwClass, code_speed: float) -> float:
    k = {**p.reference, **k}
    r = p.ref_geometry
    attn = (
        p.t_attn
        * (g.depth * g.dim * g.window_frac)
        / (r.depth * r.dim * r.window_frac)
        * (1.0 + 0.3 * max(0.0, math.log2(128 / g.head_dim)))
    )
    compile_factor = 1.0 if (p.name == "cpu" or k["COMPILE"]) else p.no_compile
    ref_dbs = p.reference["DEVICE_BATCH_SIZE"]
    micro = (
        1.0
        + 0.04 * max(0.0, math.log2(ref_dbs / g.device_batch))
        - 0.03 * max(0.0, math.log2(g.device_batch / ref_dbs))
    )
    tokens_part = (
        (p.t_base + p.t_model * g.params_rel + attn) * (g.batch / p.ref_batch) * compile_factor * micro
    )
    ns = max(1.0, _number(k, "NS_STEPS", positive=False, integer=True))
    return (tokens_part + p.t_optim * g.params_rel * ns / 5) * code_speed / cls.speed


def _capacity(params_rel: float, p: Profile, k: float) -> float:
    x = k * (params_rel**-CAPACITY_EXPONENT - 1.0)
    # a model far too small is bad, not absurd: the penalty saturates at CAPACITY_CAP
    return (CAPACITY_CAP * math.tanh(x / CAPACITY_CAP) if x > 0 else x) * p.scale


def _data(tokens: int, p: Profile) -> float:
    ratio = max(tokens, 1) / p.anchor_tokens
    return DATA_SLOPE * (ratio**-DATA_BETA - 1.0) / DATA_BETA * p.scale


def _sq_log(x: float, opt: float, width: float) -> float:
    return (math.log(x / opt) / width) ** 2


def _knob_terms(k: dict[str, Any], g: _Geometry, tokens: int, p: Profile) -> dict[str, float]:
    """Quality terms of the optimizer, schedule and architecture knobs (GPU units, before ``p.scale``)."""
    k = {**p.reference, **k}
    t: dict[str, float] = {}
    b_opt = p.ref_batch / 2
    t["batch"] = 0.004 * math.log2(g.batch / b_opt) ** 2
    # MATRIX_LR: optimum ∝ √(batch) and ∝ dim^-1/4; divergence past a line that warm-up and clipping move
    lr = _number(k, "MATRIX_LR", positive=False)
    lr_opt = 0.05 * p.lr_mult * math.sqrt(g.batch / b_opt) * (g.dim / p.lr_dim) ** -0.25
    warm = _number(k, "WARMUP_RATIO", positive=False)
    clip = _number(k, "GRAD_CLIP", positive=False)
    line = 4.0 * (2.0 if warm >= 0.05 else 1.0) * (1.5 if clip > 0 else 1.0)
    if lr < 0:
        raise Failure("nan", f"MATRIX_LR = {lr}: FAIL: nan loss at step 1")
    if lr == 0:
        t["matrix_lr"] = 0.5  # nothing inside the blocks trains
    else:
        ratio = lr / lr_opt
        if ratio > line:
            raise Failure("nan", f"FAIL: nan loss (MATRIX_LR {lr:g} is {ratio:.1f}× its optimum; diverged)")
        t["matrix_lr"] = 0.006 * _sq_log(lr, lr_opt, 1.0) + 0.01 * max(0.0, ratio / line - 0.6) ** 2 / 0.16
    for name, opt, w, limit in (
        ("EMBEDDING_LR", 0.6 * (g.batch / b_opt) ** 0.25, 0.002, 8.0),
        ("UNEMBEDDING_LR", 0.005, 0.0015, 10.0),
        ("SCALAR_LR", 0.5, 0.001, 10.0),
    ):
        v = _number(k, name, positive=False)
        opt *= p.lr_mult
        if v < 0 or v / opt > limit * (1.5 if clip > 0 else 1.0):
            raise Failure("nan", f"FAIL: nan loss ({name} {v:g} is {v / opt:.1f}× its optimum; diverged)")
        t[name.lower()] = 0.05 if v == 0 else w * _sq_log(v, opt, 1.0)
    # weight decay acts through lr·wd
    wd = _number(k, "WEIGHT_DECAY", positive=False)
    if wd < 0:
        raise Failure("nan", f"WEIGHT_DECAY = {wd}: FAIL: nan loss")
    lam, lam_opt = lr * wd, 0.05 * p.lr_mult * 0.08
    dev = (lam - lam_opt) / lam_opt
    t["weight_decay"] = min(0.02, 0.003 * dev * dev * (1.0 if dev < 0 else 0.5))
    betas = k["ADAM_BETAS"]
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise Failure(
            "crash", f"ValueError: ADAM_BETAS = {betas!r}: not enough values to unpack (expected 2)"
        )
    b1, b2 = (_number({"b": b}, "b", positive=False) for b in betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise Failure("nan", f"ADAM_BETAS = {tuple(betas)}: FAIL: nan loss at step 2")
    t["adam_beta1"] = 0.002 * ((b1 - 0.7) / 0.1) ** 2
    t["adam_beta2"] = 0.001 * _sq_log(1 - b2, 0.05, 0.8)
    m = _number(k, "MUON_MOMENTUM", positive=False)
    if not 0 <= m < 1:
        raise Failure("nan", f"MUON_MOMENTUM = {m}: FAIL: nan loss at step 3")
    t["muon_momentum"] = 0.001 * _sq_log(1 - m, 0.05, 0.5)
    ns = _number(k, "NS_STEPS", positive=False, integer=True)
    if ns <= 0:
        raise Failure("nan", f"NS_STEPS = {ns:g}: Muon without orthogonalisation: FAIL: nan loss at step 5")
    t["ns_steps"] = 0.0008 * max(0.0, 5 - ns) ** 2
    # schedule: FINAL_LR_FRAC's optimum grows with the steps the run gets (the seed's H100/H200 flip)
    down = _number(k, "WARMDOWN_RATIO", positive=False)
    final = _number(k, "FINAL_LR_FRAC", positive=False)
    if not (0 <= warm <= 1 and 0 <= down <= 1) or final < 0:
        raise Failure(
            "nan",
            f"lr schedule out of range (warm-up {warm}, warmdown {down}, final {final}): FAIL: nan loss",
        )
    t["warmup"] = 0.02 * warm * warm
    t["warmdown"] = 0.0012 * ((down - 0.6) / 0.15) ** 2
    final_opt = 0.032 + 0.21 * math.log(max(tokens, 1) / p.anchor_tokens)
    t["final_lr_frac"] = 0.004 * ((final - final_opt) / 0.05) ** 2
    t["grad_clip"] = 0.0004 if clip == 0 else min(0.004, 0.0004 * _sq_log(clip, 1.0, 1.5))
    cap = _number(k, "SOFTCAP", positive=False)
    if cap < 0:
        raise Failure("nan", f"SOFTCAP = {cap}: FAIL: nan loss at step 0")
    t["softcap"] = 0.0015 if cap == 0 else 0.001 * _sq_log(cap, 15.0, 0.7)
    rope = _number(k, "ROPE_BASE")
    if rope <= 1:
        raise Failure("nan", f"ROPE_BASE = {rope}: FAIL: nan loss at step 0")
    t["rope_base"] = 0.0006 * _sq_log(rope, 50000.0, 1.6)
    t["windows"] = 0.002 * g.s_layers + 0.0015 * (1 - min(1.0, _number(k, "SHORT_WINDOW_FRAC"))) ** 2
    t["head_dim"] = 0.001 * math.log2(g.head_dim / 128) ** 2
    t["mlp_ratio"] = 0.001 * _sq_log(g.mlp, 4.0, 0.5)
    t["shape"] = 0.002 * _sq_log(g.dim / g.depth, 96.0, 1.0)
    explode = _number(k, "LOSS_EXPLODE", positive=False)
    if explode < 4:
        raise Failure(
            "nan", f"FAIL: nan loss at step 11 (exploding: {explode + 0.5:.2f} > LOSS_EXPLODE {explode})"
        )
    return t


# --------------------------------------------------------------------------------------------------
# the landscape


@dataclass(frozen=True)
class Run:
    """What one run of a train.py does on a class with a budget (before noise)."""

    status: RunStatus
    val_bpb: float | None  # noise-free; None unless ok
    reason: str  # the log's last line when it fails
    steps: int
    step_seconds: float
    tokens: int
    params: int
    peak_vram_mb: float
    startup_seconds: float  # process start, data, compile (simulated seconds)
    train_seconds: float  # training time until the end (the budget) or the failure
    eval_seconds: float
    sigma: float  # the class's σ of val_bpb
    code_edits: int = 0
    terms: dict[str, float] = field(default_factory=dict)  # each term's contribution (bpb)

    @property
    def seconds(self) -> float:
        """Simulated seconds on the runner: startup + training + evaluation (none after a failure)."""
        return self.startup_seconds + self.train_seconds + (self.eval_seconds if self.status == "ok" else 0.0)


class Landscape:
    """The response surface; ``reference_source`` is the runner's baseline train.py (unknown edits are
    measured against its code; None: no code effects). Results are cached by (train.py, class, budget)."""

    def __init__(self, reference_source: str | None = None, *, cache_size: int = 4096) -> None:
        self.reference_code = code_statements(reference_source) if reference_source else None
        self._cache: OrderedDict[tuple[str, str, float], Run] = OrderedDict()
        self._cache_size = cache_size

    def run(self, source: str, hw: str, budget_seconds: float) -> Run:
        """The noise-free :class:`Run` of ``source`` on class ``hw`` with ``budget_seconds`` of training."""
        key = (hashlib.sha256(source.encode()).hexdigest(), hw, float(budget_seconds))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        sc = scan(source)
        effect = code_effect(sc.code, self.reference_code)
        res = self.evaluate(read_knobs(source, sc.knob_lines), hw, budget_seconds, effect)
        self._cache[key] = res
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return res

    def val_bpb(self, source: str, hw: str, budget_seconds: float, seed: int) -> float | None:
        """The noisy val_bpb one run reports (None unless ok): deterministic in (source, class, budget, seed)."""
        r = self.run(source, hw, budget_seconds)
        if r.val_bpb is None:
            return None
        rng = random.Random(f"{hashlib.sha256(source.encode()).hexdigest()}|{hw}|{float(budget_seconds)}|{seed}")
        return r.val_bpb + rng.gauss(0.0, r.sigma)

    def evaluate(
        self, knobs: dict[str, Any], hw: str, budget_seconds: float, effect: CodeEffect | None = None
    ) -> Run:
        """The :class:`Run` of train.py knobs (as :func:`parse_knobs` gives them) and a code effect."""
        cls = hw_class(hw)
        p = PROFILES[cls.profile]
        effect = effect or CodeEffect()
        k = profile_knobs(knobs, p.name)
        startup = p.startup_s
        try:
            g = _geometry(k, p)
            if p.name == "gpu" and {**p.reference, **k}["COMPILE"]:
                startup += p.compile_s * math.sqrt(g.depth / 8)
            if effect.failure is not None and effect.failure.status == "crash":
                raise effect.failure
            mem = _memory_gb(g, p)
            if mem > cls.memory_gb * 0.99:
                raise Failure("oom", f"torch.OutOfMemoryError: CUDA out of memory ({mem:.1f} GB needed, "
                                     f"{cls.memory_gb:.0f} GB on {cls.name})")  # fmt: skip
            step_s = _step_seconds(g, k, p, cls, effect.speed)
            steps = max(1, int(budget_seconds / step_s))
            raw = _raw_terms(k, g, steps * g.batch, p, effect)
            if effect.failure is not None:
                raise effect.failure
        except Failure as f:
            at = budget_seconds * (0.1 + 0.3 * uniform("nan", f.reason)) if f.status == "nan" else 0.0
            return Run(f.status, None, f.reason, 0, 0.0, 0, 0, 0.0, startup * (0.5 if f.status == "crash" else 1.0),
                       at + (2.0 if f.status == "oom" else 0.0), 0.0, cls.sigma, effect.edits)  # fmt: skip
        terms = {n: v - p.ref_terms.get(n, 0.0) for n, v in raw.items()}
        eval_s = p.eval_s * (g.params / p.ref_geometry.params) ** 0.3
        return Run("ok", p.anchor_val + sum(terms.values()), "", steps, step_s, steps * g.batch, g.params,
                   mem * 1024, startup, float(budget_seconds), eval_s, cls.sigma, effect.edits, terms)  # fmt: skip


def _memory_gb(g: _Geometry, p: Profile) -> float:
    """Peak memory: fixed, activations ∝ device batch·dim·depth (MLP-weighted), 16 bytes per parameter."""
    dbs = g.device_batch / p.reference["DEVICE_BATCH_SIZE"]
    act = p.mem_act_gb + p.mem_per_dim_gb * g.dim * g.depth / 8 * (0.5 + g.mlp / 8)
    return p.mem_fixed_gb + dbs * act + g.params * 16 / 1e9


def _raw_terms(
    k: dict[str, Any], g: _Geometry, tokens: int, p: Profile, effect: CodeEffect
) -> dict[str, float]:
    """Every quality term in bpb (before subtracting the reference's). Raises :class:`Failure`."""
    terms = {"data": _data(tokens, p), "capacity": _capacity(g.params_rel, p, p.capacity_k)}
    terms.update({n: v * p.scale for n, v in _knob_terms(k, g, tokens, p).items()})
    other = "CPU_" if p.name == "gpu" else "GPU_"
    known = set(p.reference) | {"DIM"}
    unknown = sum(unknown_knob(n, v) for n, v in k.items() if n not in known and not n.startswith(other))
    terms["unknown_knobs"] = unknown * p.scale
    terms["code"] = effect.delta * p.scale
    return terms
