"""The one-shot GPU check (run it through bench/gpu_check.sh): on one H100/H200 with no network and no
package registry, the unmodified train.py twice through a real runner, and the figures that say whether the
GPU path works and what it costs.

    bench/gpu_check.sh                     # GPU 0, 2 runs x 120 s, writes gpu_check.json
    bench/gpu_check.sh --cpu-dry-run       # the same path on the CPU with a tiny budget (CI runs this)

What it does: an embedded nats-server on loopback; one runner (process executor, its sandbox where the
machine allows it, no calibration so the first run compiles cold) that prepares the offline corpus itself;
``--runs`` baselines of the repo's train.py (seeds 0, 1, ...) with a ``--budget`` cap; then it reads the
results back from the stream and the runner's full logs and prints:

* tok/s (runner-counted tokens / the runner's training seconds), MFU (train.py's, from the runner's peak
  FLOP/s; computed here from the same formula when the runner passed none), steps, peak VRAM;
* compile seconds cold and warm: the first step's time (train.py logs its tok/s) minus a typical step's —
  the first run starts with an empty inductor cache, the second with the one the first left;
* evaluation seconds, overhead per experiment (from its claim, or the previous result when it was claimed
  ahead, to its result, minus training) and the duty cycle that overhead gives a 300 s experiment (goal:
  overhead <= 8 s, >= 97 %);
* sigma of the runs' val_bpb.

Everything goes to one JSON file (``--out``). The check stops itself before ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

from bus import EmbeddedServer, connect, publish, setup, subjects
from bus.events import (
    ExperimentClaimed,
    ExperimentFinished,
    HypothesisProposed,
    RunnerJoined,
    decode,
    new_event_id,
)
from bus.trainpy import sha256
from runner import hardware
from runner.config import REPO_ROOT, RunnerConfig
from runner.daemon import run_runner

RUN = "gpucheck"
OVERHEAD_GOAL_S = 8.0  # per experiment (issue 13): >= 97 % duty cycle at 300 s
REFERENCE_BUDGET_S = 300.0
HEADER_RE = re.compile(r"dim (\d+) x (\d+) layers \| batch (\d+)x(\d+) x(\d+) accum")
STEP_RE = re.compile(r"^step (\d+) \| progress [0-9.]+ \| loss \S+ \| tok/s (\d+)$", re.M)


def parse_log(text: str) -> dict[str, Any]:
    """From train.py's own log: the model's width, depth and sequence length, tokens per optimizer step, the
    first step's seconds (compile and warm-up) and a typical later step's."""
    head = HEADER_RE.search(text)
    if head is None:
        return {}
    dim, layers, batch, seq, accum = (int(g) for g in head.groups())
    per_step = batch * seq * accum
    steps = [(int(s), int(t)) for s, t in STEP_RE.findall(text)]
    first = next((per_step / t for s, t in steps if s == 1 and t > 0), None)
    later = [per_step / t for s, t in steps if s > 1 and t > 0]
    typical = statistics.median(later) if later else None
    return {"dim": dim, "layers": layers, "seq_len": seq, "tokens_per_step": per_step, "first_step_s": first,
            "typical_step_s": typical}  # fmt: skip


def flops_per_token(num_params: int, vocab: int, dim: int, layers: int, seq: int) -> float:
    """train.py's own MFU numerator: 6 x the non-embedding parameters + attention (12 x layers x dim x seq)."""
    return 6 * (num_params - vocab * dim) + 12 * layers * dim * seq


def _vocab(cache: Path, fingerprint: str) -> int | None:
    meta = cache / "data" / fingerprint / "trainview" / "meta.json"
    try:
        return int(json.loads(meta.read_text())["vocab_size"])
    except (OSError, KeyError, ValueError):
        return None


async def _events(js: Any) -> list[Any]:
    info = await js.stream_info(subjects.STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await js.get_msg(subjects.STREAM, seq)
        except Exception:
            continue
        out.append(decode(raw.data or b""))
    return out


async def check(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    dry = args.cpu_dry_run
    devices = [] if dry else hardware.list_devices()
    if not dry and not devices:
        raise SystemExit(
            "gpu_check: no GPU visible (nvidia-smi lists none); use --cpu-dry-run to try the path on CPU"
        )
    device = None if dry else hardware.select_device(args.gpu, devices)
    peak = args.peak_flops or (device.peak_flops if device else None)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-check-"))
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    train_py = args.train_py_source
    with EmbeddedServer(work / "nats") as server:
        nc = await connect(server.url, name="gpu-check")
        js = nc.jetstream()
        await setup(js)
        cfg = RunnerConfig(
            nats_urls=(server.url,), run=RUN, runner_id="gpu-check", executor="process", state_dir=work / "runner",
            cache_dir=cache, profile="cpu" if dry else "gpu", hw_class="cpu" if dry else "", gpu=None if dry else args.gpu,
            calibrate=False, burst=True, max_experiments=args.runs, max_budget=args.budget, fetch_timeout=2.0,
            eval_tokens=args.eval_tokens, threads=args.threads, dataset=args.dataset,
        )  # fmt: skip
        hyps = [HypothesisProposed(run=RUN, source="gpu-check", hypothesis_id=new_event_id(), agent="gpu-check",
                                   train_py=train_py, train_py_sha256=sha256(train_py), hw_class="any", seed=i)
                for i in range(args.runs)]  # fmt: skip
        for h in hyps:
            await publish(js, h)
        stop = asyncio.Event()
        task = asyncio.create_task(run_runner(cfg, stop=stop))
        remaining = args.deadline - (time.monotonic() - t_start)
        try:
            await asyncio.wait_for(asyncio.shield(task), max(remaining, 1.0))
        except TimeoutError:
            print(
                f"gpu_check: deadline of {args.deadline:.0f} s reached; stopping the runner", file=sys.stderr
            )
            stop.set()
            await asyncio.wait_for(task, 120)
        events = await _events(js)
        await nc.close()
    return report(args, events, hyps, cfg, cache, device, peak, time.monotonic() - t_start)


def report(args: argparse.Namespace, events: list[Any], hyps: list[HypothesisProposed], cfg: RunnerConfig,
           cache: Path, device: hardware.Device | None, peak: float | None, wall: float) -> dict[str, Any]:  # fmt: skip
    claims = {(e.hypothesis_id, e.attempt): e for e in events if isinstance(e, ExperimentClaimed)}
    joined = next((e for e in events if isinstance(e, RunnerJoined)), None)
    order = {h.hypothesis_id: i for i, h in enumerate(hyps)}
    results = sorted(
        (e for e in events if isinstance(e, ExperimentFinished)), key=lambda e: order.get(e.hypothesis_id, 99)
    )
    runs: list[dict[str, Any]] = []
    previous_end = 0.0
    for f in results:
        claim = claims.get((f.hypothesis_id, f.attempt))
        # one runner, one experiment at a time: a prefetched claim waits for the one before it to finish
        start = max(claim.ts, previous_end) if claim else None
        previous_end = f.ts
        log_path = cfg.state_dir / "logs" / f"{f.hypothesis_id}-a{f.attempt}.log"
        log = parse_log(log_path.read_text(errors="replace")) if log_path.exists() else {}
        tok_s = f.tokens / f.training_seconds if f.training_seconds else 0.0
        mfu, mfu_from = (f.mfu, "train.py") if f.mfu else (None, "")
        vocab = _vocab(cache, f.dataset_fingerprint)
        if mfu is None and peak and log and vocab and f.num_params:
            fpt = flops_per_token(f.num_params, vocab, log["dim"], log["layers"], log["seq_len"])
            mfu, mfu_from = 100 * fpt * tok_s / peak, "gpu_check (the runner passed no peak FLOP/s)"
        first, typical = log.get("first_step_s"), log.get("typical_step_s")
        wall_s = f.ts - start if start is not None else None
        runs.append({
            "hypothesis_id": f.hypothesis_id, "seed": order.get(f.hypothesis_id), "status": f.status,
            "reason": f.reason, "val_bpb": f.val_bpb, "tok_per_s": round(tok_s, 1),
            "mfu_percent": round(mfu, 2) if mfu is not None else None, "mfu_from": mfu_from,
            "steps": f.num_steps, "tokens": f.tokens, "peak_vram_mb": f.peak_vram_mb,
            "training_s": f.training_seconds, "eval_s": f.eval_seconds,
            "first_step_s": round(first, 2) if first else None,
            "compile_s": round(first - typical, 2) if first and typical else None,
            "wall_s": round(wall_s, 2) if wall_s is not None else None,
            "overhead_s": round(wall_s - f.training_seconds, 2) if wall_s is not None else None,
            "budget": f.budget, "budget_unit": f.budget_unit, "hw_class": f.hw_class, "log": str(log_path),
        })  # fmt: skip
    ok = [r for r in runs if r["status"] == "ok"]
    vals = [r["val_bpb"] for r in ok if r["val_bpb"] is not None]
    overheads = [r["overhead_s"] for r in ok if r["overhead_s"] is not None]
    warm_overhead = overheads[-1] if overheads else None
    summary = {
        "runs_ok": len(ok), "runs": len(runs), "runs_asked": args.runs,
        "compile_s_cold": runs[0]["compile_s"] if runs else None,
        "compile_s_warm": runs[1]["compile_s"] if len(runs) > 1 else None,
        "val_bpb_mean": statistics.mean(vals) if vals else None,
        "val_bpb_sigma": statistics.stdev(vals) if len(vals) > 1 else None,
        "overhead_s_cold": overheads[0] if overheads else None, "overhead_s_warm": warm_overhead,
        "duty_cycle_at_300s": round(REFERENCE_BUDGET_S / (REFERENCE_BUDGET_S + warm_overhead), 4)
        if warm_overhead is not None else None,
        "overhead_goal_s": OVERHEAD_GOAL_S,
        "overhead_goal_met": warm_overhead is not None and warm_overhead <= OVERHEAD_GOAL_S,
        "node_setup_s": round(joined.ts - min(h.ts for h in hyps), 1) if joined else None,
        "wall_s": round(wall, 1), "deadline_s": args.deadline,
    }  # fmt: skip
    dev: dict[str, Any] = {"hw_class": "cpu"}
    if device is not None:
        dev = {"name": device.name, "hw_class": device.hw_class, "memory_mb": device.memory_mb,
               "uuid": device.uuid, "peak_bf16_flops": peak}  # fmt: skip
    ran_on = None
    if joined is not None:
        ran_on = {"hw_class": joined.hardware.hw_class, "torch": joined.hardware.torch_version,
                  "executor": joined.executor}  # fmt: skip
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    return {"mode": mode, "device": dev, "runner_hardware": ran_on, "budget": args.budget, "runs": runs,
            "summary": summary}  # fmt: skip


def _fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def print_report(doc: dict[str, Any]) -> None:
    d, s = doc["device"], doc["summary"]
    print(f"gpu_check ({doc['mode']}): {d.get('name', 'CPU')} [{d['hw_class']}], peak bf16 "
          f"{_fmt(d.get('peak_bf16_flops') and d['peak_bf16_flops'] / 1e12, '.1f')} TFLOP/s, budget {doc['budget']:g}")  # fmt: skip
    cols = ("seed", "status", "val_bpb", "tok_per_s", "mfu_percent", "steps", "peak_vram_mb", "compile_s",
            "eval_s", "overhead_s")  # fmt: skip
    print("  " + " | ".join(cols))
    for r in doc["runs"]:
        print("  " + " | ".join(_fmt(r[c], ".4f" if c == "val_bpb" else "") for c in cols))
    print(f"  compile s cold {_fmt(s['compile_s_cold'])}, warm {_fmt(s['compile_s_warm'])}; overhead s cold "
          f"{_fmt(s['overhead_s_cold'])}, warm {_fmt(s['overhead_s_warm'])} (goal <= {s['overhead_goal_s']:g}: "
          f"{'met' if s['overhead_goal_met'] else 'NOT met'}; duty at 300 s {_fmt(s['duty_cycle_at_300s'])})")  # fmt: skip
    print(
        f"  val_bpb mean {_fmt(s['val_bpb_mean'], '.4f')}, sigma {_fmt(s['val_bpb_sigma'], '.4f')}; "
        f"runs ok {s['runs_ok']}/{s['runs_asked']}; node setup {_fmt(s['node_setup_s'])} s; wall {s['wall_s']} s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cpu-dry-run", "--smoke", action="store_true", help="the same path on CPU, tiny budget (CI)"
    )
    p.add_argument("--gpu", type=int, default=0, help="which GPU (position in nvidia-smi's list)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--budget", type=float, default=None,
                   help="per run: seconds on GPU (default 120), tokens in the CPU dry run (default 4096)")  # fmt: skip
    p.add_argument("--eval-tokens", type=int, default=None, help="default: the profile's (dry run: 2048)")
    p.add_argument("--threads", type=int, default=None, help="CPU dry run: thread limit")
    p.add_argument("--dataset", default="offline",
                   help="the data (default offline: a GPU box with no network must not wait on a download)")
    p.add_argument(
        "--peak-flops", type=float, default=None, help="peak bf16 FLOP/s for MFU (default: the class's)"
    )
    p.add_argument("--deadline", type=float, default=510.0, help="stop the runner after this many seconds")
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--work-dir", default=None, help="runner state, nats store (default: a new temp dir)")
    p.add_argument("--cache-dir", default=None, help="prepared data (default: <work-dir>/cache)")
    p.add_argument("--train-py", default=str(REPO_ROOT / "train.py"))
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error("--runs must be at least 1")
    if a.budget is None:
        a.budget = 4096.0 if a.cpu_dry_run else 120.0
    if a.eval_tokens is None and a.cpu_dry_run:
        a.eval_tokens = 2048
    a.train_py_source = Path(a.train_py).read_text()
    doc = asyncio.run(check(a))
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print_report(doc)
    print(f"  figures: {a.out}")
    return 0 if doc["summary"]["runs_ok"] == a.runs else 1


if __name__ == "__main__":
    sys.exit(main())
