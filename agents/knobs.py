"""train.py's knobs: the UPPER_CASE single-line constants at module level, and the search space over them.

A knob is ``NAME = <literal>  # comment`` on one line (``2**19`` and ``-1`` count as literals). Knobs are
read with ``ast`` and changed by rewriting only the value's characters on that line, so a knob change is a
one-line diff and the comment stays where it was.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agents.errors import ValidationError
from bus.trainpy import Knob, KnobValue, knob_values
from bus.trainpy import parse_knobs as _parse_knobs

__all__ = ["Knob", "KnobSpec", "KnobValue", "apply_knobs", "format_value", "knob_values", "parse_knobs",
           "search_space"]


def parse_knobs(source: str) -> dict[str, Knob]:
    """train.py's knobs (bus.trainpy.parse_knobs). Raises :class:`ValidationError` if it does not parse."""
    try:
        return _parse_knobs(source)
    except SyntaxError as e:
        raise ValidationError(f"train.py does not parse: {e}") from e


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-4 or abs(value) >= 1e7):
            return f"{value:.6g}"
        return repr(round(value, 10))
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def apply_knobs(source: str, changes: Mapping[str, Any]) -> str:
    """Return ``source`` with each named knob's value replaced; every other character is unchanged.

    Raises :class:`ValidationError` for a name that is not a knob of this source.
    """
    knobs = parse_knobs(source)
    missing = [n for n in changes if n not in knobs]
    if missing:
        raise ValidationError(f"not knobs of this train.py: {', '.join(missing)}; knobs are {', '.join(knobs)}")
    lines = source.splitlines(keepends=True)
    for name, value in changes.items():
        knob = knobs[name]
        if _same(knob.value, value):
            continue
        line = lines[knob.lineno - 1]
        lines[knob.lineno - 1] = line[: knob.col_offset] + format_value(value) + line[knob.end_col_offset :]
    return "".join(lines)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, list):
        b = tuple(b)
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------------------------------
# search space


@dataclass(frozen=True)
class KnobSpec:
    """One dimension of the search space: ``int``/``float`` in [low, high] (optionally log) or a choice."""

    name: str
    kind: Literal["int", "float", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int | None = None  # for int knobs: multiples of step
    choices: tuple[Any, ...] = ()

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(_same(c, value) or (c == value and type(c) is type(value)) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.choices)
        if self.kind == "int":
            if self.log:
                v = round(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
            else:
                v = rng.randint(int(self.low), int(self.high))
            if self.step:
                v = max(int(self.low), round(v / self.step) * self.step)
            return int(min(max(v, self.low), self.high))
        if self.log:
            return float(f"{math.exp(rng.uniform(math.log(self.low), math.log(self.high))):.4g}")
        return float(f"{rng.uniform(self.low, self.high):.4g}")


def _pow2_choices(v: int, down: int = 2, up: int = 2) -> tuple[int, ...]:
    if v <= 0 or v & (v - 1):
        return (v,)
    return tuple(v << i if i >= 0 else v >> -i for i in range(-down, up + 1) if (v << i if i >= 0 else v >> -i) >= 1)


def _lr(name: str, v: Any) -> KnobSpec:
    # a tuned default is rarely off by more than 4× (and a wide log range wastes most samples)
    return KnobSpec(name, "float", low=v / 4, high=v * 4, log=True)


def _ratio(hi: float) -> Callable[[str, Any], KnobSpec]:
    return lambda name, v: KnobSpec(name, "float", low=0.0, high=hi)


def _int_around(lo_div: int = 2, hi_mul: int = 2, step: int | None = None) -> Callable[[str, Any], KnobSpec]:
    def spec(name: str, v: Any) -> KnobSpec:
        lo, hi = max(1, v // lo_div), max(2, v * hi_mul)
        if step:
            lo, hi = max(step, lo - lo % step), hi - hi % step
        return KnobSpec(name, "int", low=lo, high=hi, step=step)

    return spec


def _pow2(name: str, v: Any) -> KnobSpec:
    return KnobSpec(name, "choice", choices=_pow2_choices(v))


# Declared ranges of knobs known from autoresearch's train.py, relative to the value in the base train.py
# (the same names mean GPU-sized values on a GPU and tiny ones on a CPU). Unknown knobs get a generic range.
KNOWN: dict[str, Callable[[str, Any], KnobSpec]] = {
    "DEPTH": _int_around(2, 2),
    "N_LAYER": _int_around(2, 2),
    "ASPECT_RATIO": _int_around(2, 2, step=8),
    "MODEL_DIM": lambda n, v: KnobSpec(n, "int", low=max(32, v // 2), high=v * 2, step=32),
    "N_EMBD": lambda n, v: KnobSpec(n, "int", low=max(32, v // 2), high=v * 2, step=32),
    "HEAD_DIM": _pow2,
    "N_HEAD": _int_around(2, 2),
    "N_KV_HEAD": _int_around(2, 2),
    "MLP_RATIO": lambda n, v: KnobSpec(n, "int" if isinstance(v, int) else "float", low=1, high=8),
    "MATRIX_LR": _lr,
    "EMBEDDING_LR": _lr,
    "UNEMBEDDING_LR": _lr,
    "SCALAR_LR": _lr,
    "LR": _lr,
    "LEARNING_RATE": _lr,
    "WEIGHT_DECAY": lambda n, v: KnobSpec(n, "float", low=0.0, high=max(0.5, 2 * v)),
    "WARMUP_RATIO": _ratio(0.3),
    "WARMDOWN_RATIO": _ratio(0.9),
    "COOLDOWN_RATIO": _ratio(0.9),
    "FINAL_LR_FRAC": _ratio(0.5),
    "DROPOUT": _ratio(0.3),
    "DEVICE_BATCH_SIZE": _pow2,
    "TOTAL_BATCH_SIZE": _pow2,
    "BATCH_SIZE": _pow2,
    "SEQ_LEN": _pow2,
    "SOFTCAP": lambda n, v: KnobSpec(n, "float" if isinstance(v, float) else "int", low=5, high=50),
    "LOGIT_SOFTCAP": lambda n, v: KnobSpec(n, "float" if isinstance(v, float) else "int", low=5, high=50),
    "WINDOW": _pow2,
    "WINDOW_SIZE": _pow2,
    "WINDOW_PATTERN": lambda n, v: KnobSpec(n, "choice", choices=tuple(dict.fromkeys((v, "L", "SL", "SSL", "SSSL")))),
}

# knobs an optimiser must not touch (seeds, budgets, paths, flags of the harness)
FROZEN = frozenset(
    {"SEED", "TIME_BUDGET", "MAX_SEQ_LEN", "EVAL_TOKENS", "COMPILE", "DEVICE", "DTYPE", "LOSS_EXPLODE", "LOG_INTERVAL"}
)
DEVICE_PREFIXES = ("CPU_", "GPU_")  # train.py's per-profile twins: CPU_DEPTH / GPU_DEPTH ...


def base_name(name: str) -> str:
    """``CPU_DEPTH`` -> ``DEPTH``: the name the declared ranges use."""
    for p in DEVICE_PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def _generic(name: str, v: Any) -> KnobSpec | None:
    if isinstance(v, bool):
        return KnobSpec(name, "choice", choices=(True, False))
    if isinstance(v, int) and v > 0:
        if v >= 8 and not v & (v - 1):
            return _pow2(name, v)
        return KnobSpec(name, "int", low=max(1, v // 2), high=max(2, v * 2))
    if isinstance(v, float) and v > 0:
        if v < 1 and any(s in name for s in ("BETA", "MOMENTUM")):
            return KnobSpec(name, "float", low=0.5, high=0.99)
        if v < 1 and any(s in name for s in ("RATIO", "FRAC", "DROPOUT")):
            return KnobSpec(name, "float", low=0.0 if "WINDOW" not in name else 0.125, high=1.0)
        return KnobSpec(name, "float", low=v / 4, high=v * 4, log=True)
    return None


def search_space(
    source: str,
    *,
    device: str | None = None,
    include: set[str] | None = None,
    exclude: set[str] | None = None,
) -> list[KnobSpec]:
    """The search space over the knobs present in ``source``: the declared range of a known name (``CPU_``
    and ``GPU_`` prefixes stripped), else a generic one derived from its value (bools, positive numbers;
    strings only when known). ``device`` ``"cpu"`` or ``"gpu"`` leaves out the other profile's twins, which
    would only make experiments that differ in a value nobody reads.
    """
    other = {"cpu": "GPU_", "gpu": "CPU_"}.get(device or "")
    specs: list[KnobSpec] = []
    for name, knob in parse_knobs(source).items():
        if base_name(name) in FROZEN or (exclude and name in exclude) or (include is not None and name not in include):
            continue
        if other and name.startswith(other):
            continue
        make = KNOWN.get(base_name(name))
        v = knob.value
        spec = make(name, v) if make is not None and not isinstance(v, tuple) else _generic(name, v)
        if spec is None:
            continue
        if spec.kind == "choice" and len(spec.choices) < 2:
            continue
        if spec.kind != "choice" and spec.high <= spec.low:
            continue
        specs.append(spec)
    return specs
