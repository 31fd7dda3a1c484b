"""A scripted "coding agent": the loop of docs/coding-agents.md, driven through the `swarm` CLI alone.

It does what Claude Code or Codex would do with a shell, without the model: read the shared state
(`swarm status --json`, `swarm notebook --json`), edit train.py, submit it (`swarm submit --json`), follow it
(`swarm logs --wait --json`), write a note (`swarm notebook --write`), and loop, building on its best.
The acceptance test (tests/test_coding_agent.py) runs it against a real swarm.

    python docs/examples/scripted_agent.py --nats nats://127.0.0.1:4222 --run myrun --rounds 2

It prints one JSON object per round and a final summary; it exits non-zero when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# each round scales one learning-rate knob of the CPU profile a little (a real coding agent would reason here)
EDITS = [("MATRIX_LR", 1.25), ("EMBEDDING_LR", 1.2), ("UNEMBEDDING_LR", 1.3), ("SCALAR_LR", 0.8)]


def swarm(*args: str, stdin: str | None = None, timeout: float = 300) -> Any:
    """Run one `swarm` command; return its JSON output (every command here is called with --json)."""
    cmd = [*os.environ.get("SWARM_CMD", f"{sys.executable} -m swarmcli").split(), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"`swarm {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def scale_knob(source: str, knob: str, factor: float) -> tuple[str, str]:
    """train.py with ``knob = value`` multiplied by ``factor``, and a one-line description of the change."""
    m = re.search(rf"^{knob} = ([0-9.eE+-]+)", source, flags=re.M)
    if m is None:
        raise SystemExit(f"train.py has no numeric {knob}")
    old = float(m.group(1))
    new = round(old * factor, 6)
    return source[: m.start(1)] + repr(new) + source[m.end(1) :], f"{knob} {old:g} -> {new:g}"


def fetch_train_py(hypothesis_id: str, common: list[str], workdir: Path) -> str:
    """A hypothesis's train.py, from the ledger (`swarm logs H --train-py FILE`)."""
    path = workdir / f"{hypothesis_id}.py"
    swarm("logs", hypothesis_id, *common, "--train-py", str(path), "--json")
    return path.read_text()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats", default=os.environ.get("SWARM_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--run", default=os.environ.get("SWARM_RUN", "default"))
    p.add_argument("--name", default="claude-code", help="agent name its results are attributed to")
    p.add_argument("--model", default="claude-sonnet-4-5", help="model recorded with each hypothesis")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--hw-class", default="cpu")
    p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for each result")
    a = p.parse_args()
    common = ["--nats", a.nats, "--run", a.run]

    # 1. read the shared state: is anything running, what is the best so far, what have others written?
    status = swarm("status", *common, "--json")
    assert status["schema"] == "swarm.status/1", status["schema"]
    notes = swarm("notebook", *common, "--json")["notes"]
    print(json.dumps({"step": "read", "runners_online": status["runners_online"], "best": status["best"],
                      "notes": len(notes)}), flush=True)  # fmt: skip

    workdir = Path(tempfile.mkdtemp(prefix="scripted-agent-"))
    # build on the swarm's best train.py of the class, whoever found it; else on the repository's
    top = next((x for x in status["best"] if x["hw_class"] == a.hw_class), None)
    parent, best, source = "baseline", None, (REPO / "train.py").read_text()
    if top is not None:
        parent, best = top["hypothesis_id"], top["val_bpb"]
        source = fetch_train_py(parent, common, workdir)
    rounds = []
    for i in range(a.rounds):
        knob, factor = EDITS[i % len(EDITS)]
        edited, change = scale_knob(source, knob, factor)
        path = workdir / f"train-{i}.py"
        path.write_text(edited)
        # 2. submit the edit, attributed to this agent and its model
        sub = swarm("submit", str(path), *common, "-m", change, "--parent", parent, "--hw-class", a.hw_class,
                    "--author", a.name, "--model", a.model, "--rationale", f"round {i}: probe {knob}", "--json")  # fmt: skip
        hid = sub["hypothesis_id"]
        # 3. follow it until its result is in, then read the whole log (from the log store, any machine)
        res = swarm("logs", hid, *common, "--wait", str(a.wait), "--json", timeout=a.wait + 60)
        h = res["hypothesis"]
        full = swarm("logs", hid, *common, "--full", "--json")["log"]
        val = h["val_bpb"]
        improved = h["status"] == "ok" and val is not None and (best is None or val < best)
        # 4. write down what was learned, for every agent in the swarm
        body = (f"- change: `{change}`\n- result: {h['status']}, val_bpb {val}\n"
                f"- {'kept as my new parent' if improved else 'not better; back to ' + parent}\n")  # fmt: skip
        note = swarm("notebook", *common, "--write", f"{a.name}: {change}", "--author", a.name, "--ref", hid,
                     "--json", stdin=body)  # fmt: skip
        if improved:  # 5. loop, building on the best so far (its train.py as the swarm recorded it)
            parent, best, source = hid, val, fetch_train_py(hid, common, workdir)
        rounds.append({"round": i, "hypothesis_id": hid, "status": h["status"], "val_bpb": val,
                       "log_source": full["source"] if full else None, "note_id": note["note_id"],
                       "improved": improved})  # fmt: skip
        print(json.dumps({"step": "round", **rounds[-1]}), flush=True)
    print(json.dumps({"step": "done", "agent": a.name, "model": a.model, "best": best, "parent": parent,
                      "rounds": rounds}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
