"""A tiny harness that honours the experiment contract without torch, for the runner's tests and for
anyone who needs a fast process-executor run: :data:`FAKE_PREPARE_PY` (ensure_prepared + the ``evaluate``
CLI) and :func:`fake_train_py` (a train.py whose behaviour is set by knobs and an injected snippet).

The fake evaluation is trusted the same way the real one is: it builds the model from train.py's
``build_model(config)``, loads the saved weight and scores it itself: val_bpb = 1.5 + |W - 1| (W is the
weight train.py saved), whatever train.py printed.
"""

from __future__ import annotations

import textwrap

FAKE_PREPARE_PY = '''\
"""Fake prepare.py for runner tests (contract-shaped, no torch)."""
import argparse, dataclasses, hashlib, importlib.util, json, os, sys, time
from pathlib import Path


@dataclasses.dataclass
class Prepared:
    root: Path
    data_dir: Path
    val_dir: Path
    tokenizer_path: Path
    dataset_fingerprint: str
    tokenizer_fingerprint: str
    vocab_size: int


def ensure_prepared(profile=None, dataset=None, corpus=None):
    cache = Path(os.environ.get("SWARM_CACHE_DIR") or Path.home() / ".cache" / "swarm")
    root = cache / "data" / "fakefp"
    train, val = root / "trainview", root / "val"
    train.mkdir(parents=True, exist_ok=True)
    val.mkdir(parents=True, exist_ok=True)
    (train / "train.bin").write_text("training text " * 10)
    (train / "tokenizer.json").write_text("{}")
    (val / "val.bin").write_text("SECRET VALIDATION TEXT")
    return Prepared(root, train, val, train / "tokenizer.json", "fakefp", "faketok", 256)


def evaluate(train_py, model_dir, val_dir):
    t0 = time.time()
    spec = importlib.util.spec_from_file_location("train_under_eval", train_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    model = mod.build_model(config)
    weights = json.loads((Path(model_dir) / "model.pt").read_text())
    val_text = (Path(val_dir) / "val.bin").read_text()
    assert val_text.startswith("SECRET")
    if not getattr(model, "causal", True):
        return {"val_bpb": None, "causal": False, "status": "noncausal", "reason": "future tokens change logits",
                "eval_tokens": 0, "eval_seconds": time.time() - t0, "num_params": 1}
    val_bpb = 1.5 + abs(float(weights["w"]) - 1.0)
    return {"val_bpb": val_bpb, "causal": True, "status": "ok", "reason": "", "eval_tokens": len(val_text),
            "eval_seconds": time.time() - t0, "num_params": 1}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "evaluate":
        p = argparse.ArgumentParser()
        p.add_argument("--train-py", required=True)
        p.add_argument("--model-dir", required=True)
        p.add_argument("--val-dir", required=True)
        p.add_argument("--json-out", required=True)
        a = p.parse_args(argv[1:])
        res = evaluate(a.train_py, a.model_dir, a.val_dir)
        Path(a.json_out).write_text(json.dumps(res))
        print(json.dumps(res))
        return 0
    ensure_prepared()
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

_FAKE_TRAIN = '''\
"""Fake train.py for runner tests."""
import json
import os
import sys
import time

W = {w!r}                 # the weight the evaluation scores: val_bpb = 1.5 + |W - 1|
STEPS = {steps!r}             # progress lines
CAUSAL = {causal!r}

{module_extra}

class Model:
    def __init__(self, config):
        self.w = config["w"]
        self.causal = CAUSAL


def build_model(config):
    return Model(config)


def main():
    budget = float(os.environ.get("SWARM_TIME_BUDGET", "1"))
    out = os.environ["SWARM_OUT_DIR"]
    data = os.environ["SWARM_DATA_DIR"]
    assert os.path.exists(os.path.join(data, "train.bin")), "no training data"
    t0 = time.time()
{behaviour}
    for i in range(1, STEPS + 1):
        time.sleep(budget / STEPS)
        print(f"step {{i}} | progress {{i / STEPS:.3f}} | loss {{3.0 - i / STEPS:.4f}} | tok/s 1000", flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.pt"), "w") as f:
        json.dump({{"w": W}}, f)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({{"w": W}}, f)
    dt = time.time() - t0
    print("---")
    print(f"training_seconds: {{dt:.2f}}")
    print(f"total_seconds: {{dt:.2f}}")
    print("peak_vram_mb: 0.0")
    print("mfu_percent: 0.0")
    print("total_tokens_M: 0.001")
    print(f"num_steps: {{STEPS}}")
    print("num_params_M: 0.000001")


if __name__ == "__main__":
    main()
'''


def fake_train_py(
    w: float = 1.25, steps: int = 4, causal: bool = True, behaviour: str = "", module_extra: str = ""
) -> str:
    """A contract-honouring train.py: trains for SWARM_TIME_BUDGET seconds (sleeping), prints progress and
    the ``---`` block, saves ``model.pt``/``config.json``. ``behaviour`` is code run at the start of main()
    (dedented, then indented into it); ``module_extra`` is added at module level."""
    body = textwrap.indent(textwrap.dedent(behaviour).strip("\n"), "    ") if behaviour.strip() else ""
    return _FAKE_TRAIN.format(w=w, steps=steps, causal=causal, behaviour=body, module_extra=module_extra)


def expected_val_bpb(w: float) -> float:
    return 1.5 + abs(w - 1.0)
