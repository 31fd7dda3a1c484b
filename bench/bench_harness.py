"""Harness figures on this machine (run by hand; ``--smoke`` for CI): tokens/s, steps in the budget, per-run
overhead, the evaluation's cost and the share of it spent on causality checks, val_bpb σ across seeds.

    python bench/bench_harness.py                      # cpu profile, its budget, 5 seeds
    python bench/bench_harness.py --budget 16384 --seeds 3
    python bench/bench_harness.py --smoke

Each seed runs train.py by hand (no runner, no sandbox: the harness alone; bench/bench_runner.py measures
the runner) and then the trusted evaluation (`prepare.py evaluate`: model processes + the scorer).
Overhead = everything but training: process start, setup, saving, and the evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import prepare  # noqa: E402
from bus.trainpy import parse_summary  # noqa: E402


def block(stdout: str) -> dict[str, str]:
    """train.py's `---` block (bus.trainpy.parse_summary: the one parser of its output)."""
    return parse_summary(stdout).text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=sorted(prepare.PROFILES))
    ap.add_argument("--budget", type=float, default=None, help="the profile's unit (default: the profile's budget)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--train-py", default=str(REPO / "train.py"))
    ap.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = ap.parse_args()

    if args.smoke:
        args.budget, args.seeds = 2048, 2
        os.environ.setdefault("SWARM_EVAL_TOKENS", "2048")
    os.environ["SWARM_PROFILE"] = args.profile
    t0 = time.time()
    prep = prepare.ensure_prepared(args.profile)
    print(f"prepare: {time.time() - t0:.1f}s (cached after the first run) dataset {prep.dataset_fingerprint} "
          f"tokenizer {prep.tokenizer_fingerprint} vocab {prep.vocab_size}")
    spec = prepare.PROFILES[args.profile]
    budget = args.budget or spec.budget
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-harness-"))
    rows = []
    for seed in range(args.seeds):
        out = work / f"seed{seed}"
        env = {**os.environ, "SWARM_MODE": "runner", "SWARM_DATA_DIR": str(prep.data_dir),
               "SWARM_BUDGET": str(budget), "SWARM_BUDGET_UNIT": spec.budget_unit, "SWARM_SEED": str(seed),
               "SWARM_OUT_DIR": str(out)}
        env.pop("SWARM_VAL_DIR", None)
        t = time.time()
        train = subprocess.run([sys.executable, args.train_py], env=env, cwd=REPO, capture_output=True, text=True)
        train_wall = time.time() - t
        if train.returncode != 0:
            sys.exit(f"seed {seed}: train.py exited {train.returncode}\n{train.stdout[-2000:]}{train.stderr[-2000:]}")
        b = block(train.stdout)
        t = time.time()
        ev = subprocess.run([sys.executable, str(REPO / "prepare.py"), "evaluate", "--train-py", args.train_py,
                             "--model-dir", str(out), "--val-dir", str(prep.val_dir)],
                            env=env, cwd=REPO, capture_output=True, text=True, check=True)
        eval_wall = time.time() - t
        res = json.loads(ev.stdout.strip().splitlines()[-1])
        training = float(b["training_seconds"])
        row = dict(seed=seed, val_bpb=res["val_bpb"], steps=int(b["num_steps"]), training_s=training,
                   tok_s=float(b["total_tokens_M"]) * 1e6 / training, train_wall_s=train_wall, eval_wall_s=eval_wall,
                   eval_s=res["eval_seconds"], check_share=res["check_seconds"] / max(res["eval_seconds"], 1e-9),
                   overhead_s=train_wall - training + eval_wall)
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    def stat(key: str) -> str:
        vals = [r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± {sd:.4f} (min {min(vals):.4f}, max {max(vals):.4f})"

    print("---")
    print(f"profile: {args.profile}")
    print(f"budget: {budget:g} {spec.budget_unit}")
    print(f"seeds: {len(rows)}")
    print(f"num_params_M: {b['num_params_M']}")
    print(f"tokens_per_s: {stat('tok_s')}")
    print(f"steps_in_budget: {stat('steps')}")
    print(f"overhead_s: {stat('overhead_s')}")
    print(f"eval_process_s: {stat('eval_wall_s')}")
    print(f"causality_check_share_of_eval: {stat('check_share')}")
    print(f"val_bpb: {stat('val_bpb')}")


if __name__ == "__main__":
    main()
