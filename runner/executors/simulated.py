"""The simulated executor: no training. A seeded synthetic landscape over train.py's UPPER_CASE knobs gives
val_bpb, with noise and a duration model, time-compressed by ``time_scale`` so a swarm of hundreds of
runners fits on one small machine (agents and CLI scale tests, benchmarks).

The landscape (deterministic for (knobs, seed, hw_class)):

* each knob is compared with the *reference* knobs (the repo's baseline train.py, else
  :data:`DEFAULT_REFERENCE`); the reference itself scores exactly :data:`BASELINE_VAL_BPB` of its class
  (cpu 3.40, any other class 1.00) before noise;
* a numeric knob ``x`` with reference ``r`` contributes ``a·(d − s)² − a·s²`` where ``d = log(x/r)`` and
  ``s`` is its optimum shift: learning rates (names with ``LR``/``LEARNING_RATE``) want ×1.5
  (``s = 0.405``, ``a = 0.25``), ``WARMDOWN*`` ×1.35, ``DEPTH``/``N_LAYER*`` ×1.4, ``WEIGHT_DECAY`` ×0.8;
  any other knob gets a seeded ``s ∈ [−0.3, 0.3]`` and ``a ∈ [0.02, 0.12]`` from a hash of its name. So
  moving a knob part-way toward its optimum improves val_bpb (by up to ``a·s²``), overshooting hurts;
* interactions: each pair of changed numeric knobs adds ``c·d_i·d_j`` with a seeded ``c ∈ [−0.04, 0.04]``;
* a non-numeric knob that differs from the reference adds a seeded ``[−0.01, 0.02]``;
* crash (exit 1 with a traceback) for absurd values: a numeric knob ≤ 0 whose reference is > 0, or more
  than ×16 / ÷16 away from its reference, or a non-finite value;
* noise: Gaussian σ = 0.015 (cpu) / 0.004 (others), seeded by (knobs, seed).

Duration model: training takes the budget; startup 4 s (+0.5 s per 1.5× of model size), evaluation 3 s;
steps/s ∝ 1 / model size (DEPTH × width knobs); all wall times × ``time_scale``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

from runner.config import RunnerConfig
from runner.contract import parse_knobs
from runner.executors.base import EvalOutcome, Job, LineCallback, NodeData, TrainOutcome

BASELINE_VAL_BPB = {"cpu": 3.40}
BASELINE_VAL_BPB_DEFAULT = 1.00
NOISE_SIGMA = {"cpu": 0.015}
NOISE_SIGMA_DEFAULT = 0.004

# Used when the repo has no train.py to read the reference knobs from.
DEFAULT_REFERENCE: dict[str, Any] = {
    "DEPTH": 4,
    "MODEL_DIM": 256,
    "N_HEAD": 4,
    "SEQ_LEN": 256,
    "BATCH_SIZE": 16,
    "MATRIX_LR": 0.02,
    "EMBEDDING_LR": 0.3,
    "WEIGHT_DECAY": 0.0,
    "WARMUP_RATIO": 0.0,
    "WARMDOWN_RATIO": 0.5,
}

_NAMED_OPTIMA: list[tuple[tuple[str, ...], float, float]] = [
    # (name fragments, optimum shift s (log), amplitude a)
    (("LEARNING_RATE", "LR"), math.log(1.5), 0.25),
    (("WARMDOWN",), math.log(1.35), 0.15),
    (("DEPTH", "N_LAYER"), math.log(1.4), 0.20),
    (("WEIGHT_DECAY",), math.log(0.8), 0.05),
]
_SIZE_KNOBS = ("DEPTH", "N_LAYER", "MODEL_DIM", "N_EMBD", "WIDTH", "DIM", "ASPECT_RATIO")


def _h(*parts: object) -> float:
    """A uniform [0, 1) number from a hash of ``parts``."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


class SimulatedCrash(Exception):
    pass


class Landscape:
    """The synthetic val_bpb function (see the module docstring)."""

    def __init__(self, reference: dict[str, Any], hw_class: str) -> None:
        self.reference = dict(reference)
        self.hw_class = hw_class
        self.baseline = BASELINE_VAL_BPB.get(hw_class, BASELINE_VAL_BPB_DEFAULT)
        self.sigma = NOISE_SIGMA.get(hw_class, NOISE_SIGMA_DEFAULT)

    def _shape(self, name: str) -> tuple[float, float]:
        for fragments, s, a in _NAMED_OPTIMA:
            if any(f in name for f in fragments):
                return s, a
        return (_h("s", name) - 0.5) * 0.6, 0.02 + 0.10 * _h("a", name)

    def deltas(self, knobs: dict[str, Any]) -> dict[str, float]:
        """log(x / reference) of every changed numeric knob. Raises SimulatedCrash for absurd values."""
        out: dict[str, float] = {}
        for name, ref in self.reference.items():
            if name not in knobs:
                continue
            x, r = _num(knobs[name]), _num(ref)
            if x is None or r is None or x == r:
                continue
            if not math.isfinite(x):
                raise SimulatedCrash(f"{name} = {x}: not finite")
            if r > 0 and x <= 0:
                raise SimulatedCrash(f"{name} = {x}: must be positive")
            if r == 0 or x == 0:
                out[name] = math.copysign(min(abs(x - r), 1.0), x - r) * 0.5
                continue
            if (x > 0) != (r > 0):
                raise SimulatedCrash(f"{name} = {x}: wrong sign")
            d = math.log(x / r)
            if abs(d) > math.log(16):
                raise SimulatedCrash(f"{name} = {x}: more than 16x away from {r} (diverged)")
            out[name] = d
        return out

    def mean(self, knobs: dict[str, Any]) -> float:
        """Noise-free val_bpb of ``knobs``."""
        value = self.baseline
        d = self.deltas(knobs)
        for name, di in d.items():
            s, a = self._shape(name)
            value += a * (di - s) ** 2 - a * s * s
        names = sorted(d)
        for i, ni in enumerate(names):
            for nj in names[i + 1 :]:
                c = (_h("c", ni, nj) - 0.5) * 0.08
                value += c * d[ni] * d[nj]
        for name, ref in self.reference.items():
            if name in knobs and _num(ref) is None and knobs[name] != ref:
                value += -0.01 + 0.03 * _h("cat", name, knobs[name])
        return value

    def sample(self, knobs: dict[str, Any], seed: int) -> float:
        rng = random.Random(_h("noise", sorted(knobs.items(), key=lambda kv: kv[0]), seed, self.hw_class))
        return self.mean(knobs) + rng.gauss(0.0, self.sigma)

    def size_factor(self, knobs: dict[str, Any]) -> float:
        f = 1.0
        for name, ref in self.reference.items():
            if any(k in name for k in _SIZE_KNOBS):
                x, r = _num(knobs.get(name, ref)), _num(ref)
                if x and r and x > 0 and r > 0:
                    f *= x / r
        return max(f, 1e-3)


def reference_knobs(config: RunnerConfig) -> dict[str, Any]:
    path = Path(config.baseline_train_py)
    if path.is_file():
        knobs = parse_knobs(path.read_text())
        if knobs:
            return knobs
    return dict(DEFAULT_REFERENCE)


class SimulatedExecutor:
    name = "simulated"
    startup_seconds = 4.0
    eval_seconds = 3.0
    baseline_steps_per_second = 10.0

    def __init__(self, config: RunnerConfig, hw_class: str | None = None) -> None:
        self.config = config
        self.scale = config.time_scale
        self.landscape = Landscape(reference_knobs(config), hw_class or config.hw_class or "cpu")

    def set_hw_class(self, hw_class: str) -> None:
        self.landscape = Landscape(self.landscape.reference, hw_class)

    async def setup(self, node: NodeData) -> None:
        return None

    async def prepare(self, job: Job) -> None:
        job.out_dir.mkdir(parents=True, exist_ok=True)

    async def train(self, job: Job, on_line: LineCallback) -> TrainOutcome:
        start = time.monotonic()
        knobs = parse_knobs(job.train_py)
        lines: list[str] = []

        def emit(line: str) -> None:
            lines.append(line + "\n")
            on_line(line)

        with job.log_path.open("a") as logf:
            try:
                self.landscape.deltas(knobs)
            except SimulatedCrash as e:
                await asyncio.sleep(min(1.0, self.startup_seconds) * self.scale)
                text = f'Traceback (most recent call last):\n  File "train.py"\nRuntimeError: simulated divergence: {e}\n'
                logf.write(text)
                emit(text.rstrip("\n"))
                return TrainOutcome(1, time.monotonic() - start, output="".join(lines))
            size = self.landscape.size_factor(knobs)
            startup = self.startup_seconds + 0.5 * math.log(size, 1.5) if size > 1 else self.startup_seconds
            budget = job.budget_seconds
            steps_total = max(1, int(self.baseline_steps_per_second / size * budget))
            wall_train = budget * self.scale
            if startup * self.scale + wall_train > job.train_timeout:
                await asyncio.sleep(job.train_timeout)
                return TrainOutcome(None, time.monotonic() - start, timed_out=True, output="".join(lines))
            await asyncio.sleep(startup * self.scale)
            ticks = 10
            final = self.landscape.sample(knobs, job.seed)
            for i in range(1, ticks + 1):
                await asyncio.sleep(wall_train / ticks)
                step = steps_total * i // ticks
                loss = (final + 2.0 * (1 - i / ticks)) * math.log(2) * 4
                emit(
                    f"step {step} | progress {i / ticks:.3f} | loss {loss:.4f} | tok/s {int(4096 * steps_total / budget)}"
                )
            (job.out_dir / "model.pt").write_text(json.dumps({"simulated": True}))
            (job.out_dir / "config.json").write_text(json.dumps({"knobs": knobs}, default=str))
            summary = {
                "training_seconds": budget,
                "total_seconds": budget + startup,
                "peak_vram_mb": 0.0,
                "mfu_percent": 0.0,
                "total_tokens_M": 4096 * steps_total / 1e6,
                "num_steps": steps_total,
                "num_params_M": 4.3 * size,
            }
            emit("---")
            for k, v in summary.items():
                emit(f"{k}: {v}")
            logf.writelines(lines)
        return TrainOutcome(0, time.monotonic() - start, output="".join(lines))

    async def evaluate(self, job: Job) -> EvalOutcome:
        start = time.monotonic()
        await asyncio.sleep(self.eval_seconds * self.scale)
        knobs = parse_knobs(job.train_py)
        val = self.landscape.sample(knobs, job.seed)
        with job.log_path.open("a") as logf:
            logf.write(f"[runner] simulated evaluation: val_bpb {val:.6f}\n")
        return EvalOutcome(
            "ok",
            val_bpb=val,
            seconds=time.monotonic() - start,
            num_params=int(4.3e6 * self.landscape.size_factor(knobs)),
        )

    async def cleanup(self, job: Job) -> None:
        return None

    async def close(self) -> None:
        return None
