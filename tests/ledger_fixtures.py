"""Realistic fixture ledgers built from events without NATS (project() + apply(), like a replay).

:func:`write_fixture_ledger` writes two runs: ``run-a`` (3 baselines per class on cpu and h100, three
agents: ``optuna``, ``random`` and ``claude-some-model`` with LLM usage and costs, ~60 hypotheses with
crashes, timeouts, an oom, keeps/discards, validate-tier repeats of the best, notes with hostile text,
two runners) and a smaller ``run-b`` with the same agents, for cross-run comparison. Deterministic: the
same call always produces the same events (ids and timestamps included).
"""

from __future__ import annotations

import difflib
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bus import events as ev
from bus import subjects
from ledger.projection import RawMessage, apply, project
from ledger.schema import connect_db

HOSTILE = "<script>alert(1)</script>"
BASE_TRAIN_PY = '''"""Fixture train.py: a tiny GPT trained for a fixed wall-clock budget."""
LR = 0.001
DEPTH = 4
WIDTH = 128
WARMUP = 10
WEIGHT_DECAY = 0.1


def main() -> None:
    pass


if __name__ == "__main__":
    main()
'''
AGENTS = [("optuna", "optuna", ""), ("random", "random", ""), ("claude-some-model", "anthropic", "some-model")]
RUNNERS = {"cpu": "runner-cpu-1", "h100": "runner-h100-1"}
BASE_VAL = {"cpu": 3.45, "h100": 1.0}
NOISE = {"cpu": 0.015, "h100": 0.003}
T0 = 1_700_000_000.0


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def diff(a: str, b: str) -> str:
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), "a/train.py", "b/train.py"))


def build_ledger(path: Path, events: Sequence[ev.Event]) -> None:
    """Project ``events`` (in order, seq 1..n) into a new ledger file at ``path``."""
    msgs = [RawMessage(i + 1, subjects.event_subject(e), ev.encode(e), e.ts) for i, e in enumerate(events)]
    con = connect_db(str(path))
    try:
        apply(con, project(msgs), consumer="ledger")
    finally:
        con.close()


@dataclass
class FixtureRun:
    run: str
    events: list[ev.Event] = field(default_factory=list)

    def of(self, kind: type[ev.Event]) -> list[ev.Event]:
        return [e for e in self.events if isinstance(e, kind)]


def _ids(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def simulate_run(run: str, *, seed: int, per_agent: int, t0: float = T0) -> FixtureRun:
    """One run's events, as the swarm would publish them (stream order = ts order)."""
    rng = random.Random(seed)
    timeline: list[tuple[float, int, ev.Event]] = []
    order = [0]

    def emit(e: ev.Event) -> None:
        order[0] += 1
        timeline.append((e.ts, order[0], e))

    def eid(ts: float) -> str:
        return f"{int(ts * 1000):012x}-{_ids(rng)[:20]}"  # time-ordered, deterministic

    def env(source: str, ts: float) -> dict[str, object]:
        return {"run": run, "source": source, "ts": ts, "event_id": eid(ts)}

    for i, (agent, provider, model) in enumerate(AGENTS):
        emit(ev.AgentJoined(**env(agent, t0 + i), agent=agent, provider=provider, model=model,  # type: ignore[arg-type]
                            strategy=f"{provider} strategy"))
    for cls, runner in RUNNERS.items():
        hw = ev.Hardware(hw_class=cls, gpu_name="H100 80GB" if cls == "h100" else "", gpu_count=int(cls == "h100"),
                         cpu_count=16, host=f"{runner}.local")
        cal = ev.Calibration(steps_per_second=3.5 if cls == "h100" else 0.2)
        emit(ev.RunnerJoined(**env(runner, t0 + 5), runner=runner, hardware=hw, classes=[cls],  # type: ignore[arg-type]
                             calibration=cal))
    free = {cls: t0 + 10.0 for cls in RUNNERS}
    keeps: list[tuple[float, str, str, str, str]] = []  # (decision ts, hid, agent, cls, train_py)
    best: dict[tuple[str, str], tuple[float, str]] = {}  # (agent, cls) -> (val, hid)
    baseline_vals: dict[str, list[float]] = {c: [] for c in RUNNERS}

    def execute(p: ev.HypothesisProposed, status: str, val: float | None) -> tuple[float, float]:
        cls, runner = p.hw_class, RUNNERS[p.hw_class]
        start = max(free[cls], p.ts + 0.5)
        emit(ev.ExperimentClaimed(**env(runner, start), hypothesis_id=p.hypothesis_id, attempt=1,  # type: ignore[arg-type]
                                  runner=runner, hardware=ev.Hardware(hw_class=cls)))
        budget = 300.0 if cls == "h100" else 40.0
        if status == "ok":
            training = budget + rng.uniform(0.0, 2.0)
            total = training + rng.uniform(15.0, 60.0) if cls == "h100" else training + rng.uniform(5.0, 15.0)
        elif status == "timeout":
            training, total = budget * 1.5, budget * 1.5 + 5.0
        else:
            training = rng.uniform(0.0, 5.0)
            total = training + rng.uniform(3.0, 10.0)
        training, total = round(training, 3), round(total, 3)
        end = start + total
        free[cls] = end + rng.uniform(0.5, 3.0)
        reasons = {"crash": "Traceback: RuntimeError: shape mismatch", "timeout": "exceeded 1.5x budget",
                   "oom": "CUDA out of memory"}
        emit(ev.ExperimentFinished(
            **env(runner, end), hypothesis_id=p.hypothesis_id, attempt=1, runner=runner,  # type: ignore[arg-type]
            status=status, val_bpb=val, training_seconds=training, total_seconds=total,
            num_steps=int(training * 3.5), hw_class=cls, train_py_sha256=p.train_py_sha256,
            budget_seconds=budget, reason=reasons.get(status, ""),
            log_tail="" if status == "ok" else f"{reasons[status]} {HOSTILE}",
        ))  # fmt: skip
        return end, total

    base_sha = sha256(BASE_TRAIN_PY)
    for cls in RUNNERS:
        for i in range(3):
            ts = t0 + 8 + i * 0.1
            p = ev.HypothesisProposed(
                **env("optuna", ts), hypothesis_id=f"baseline-{cls}-{i}", agent="baseline",  # type: ignore[arg-type]
                train_py=BASE_TRAIN_PY, train_py_sha256=base_sha, parent=ev.BASELINE,
                description=f"baseline: unmodified train.py, run {i + 1}/3 on {cls}", tier="validate",
                hw_class=cls, seed=i, tags=["baseline"],
            )
            emit(p)
            val = round(BASE_VAL[cls] + rng.gauss(0, NOISE[cls]), 5)
            baseline_vals[cls].append(val)
            execute(p, "ok", val)
    base_mean = {c: sum(v) / len(v) for c, v in baseline_vals.items()}

    knob_values = {"LR": ["0.0005", "0.002", "0.003", "0.004"], "DEPTH": ["3", "5", "6"],
                   "WIDTH": ["96", "192", "256"], "WARMUP": ["0", "5", "20"], "WEIGHT_DECAY": ["0.0", "0.05", "0.2"]}
    n_total = per_agent * len(AGENTS)
    for k in range(n_total):
        agent, provider, model = AGENTS[k % len(AGENTS)]
        i = k // len(AGENTS)
        cls = "h100" if (k // len(AGENTS)) % 2 == 0 else "cpu"
        ts = t0 + 30 + k * (400.0 / len(AGENTS))
        mine = [kp for kp in keeps if kp[2] == agent and kp[3] == cls and kp[0] < ts]
        parent, parent_src = (mine[-1][1], mine[-1][4]) if mine else (ev.BASELINE, BASE_TRAIN_PY)
        knob = rng.choice(sorted(knob_values))
        value = rng.choice(knob_values[knob])
        src = "\n".join(f"{knob} = {value}" if line.startswith(f"{knob} = ") else line
                        for line in parent_src.split("\n"))
        if src == parent_src:
            src = parent_src.replace("WARMUP = ", f"# try {k}\nWARMUP = ", 1)
        desc = f"{knob.lower()} {value}"
        if agent == "claude-some-model":
            desc = f"set {knob} to {value} (claude idea {i})"
            if i == 2:
                desc = f'{HOSTILE} & "quotes" in {knob}={value}'
        hid = f"{run}-{agent[:6]}-{i:02d}"
        p = ev.HypothesisProposed(
            **env(agent, ts), hypothesis_id=hid, agent=agent, model=model, train_py=src,  # type: ignore[arg-type]
            train_py_sha256=sha256(src), parent=parent, diff=diff(parent_src, src), description=desc,
            rationale=f"because {knob} matters {HOSTILE}" if agent == "claude-some-model" else f"{provider} sample",
            hw_class=cls, seed=k, tags=[], knobs={knob: value},
        )
        emit(p)
        if agent == "claude-some-model":
            inp, out = 4000 + rng.randrange(2000), 500 + rng.randrange(800)
            emit(ev.LlmUsage(**env(agent, ts - 2), agent=agent, provider=provider, model=model,  # type: ignore[arg-type]
                             input_tokens=inp, output_tokens=out, cost_usd=round(inp * 3e-6 + out * 15e-6, 6),
                             latency_seconds=rng.uniform(2, 9), hypothesis_ids=[hid]))
            if i == 4:
                emit(ev.LlmUsage(**env(agent, ts - 1), agent=agent, provider=provider, model=model,  # type: ignore[arg-type]
                                 ok=False, error="overloaded", cost_usd=0.0))
        r = rng.random()
        status = ("crash" if r < 0.12 else "timeout" if r < 0.16 else "oom" if r < 0.19 else "ok")
        if agent == "random" and i == 1:
            status = "crash"
        if agent == "optuna" and i == 3:
            status = "timeout"
        if agent == "claude-some-model" and i == 2:
            status = "ok"
        val = None
        if status == "ok":
            skill = {"optuna": 0.8, "random": 0.3, "claude-some-model": 1.2}[agent]
            gain = 0.025 * skill * (i + 1) / per_agent
            val = round(BASE_VAL[cls] * (1 - gain) + rng.gauss(0, NOISE[cls]), 5)
            if agent == "claude-some-model" and i == 2:
                val = round(BASE_VAL[cls] * 0.985, 5)
        end, _ = execute(p, status, val)
        ref = min(base_mean[cls], best.get((agent, cls), (9e9, ""))[0])
        keep = val is not None and val < ref
        if val is not None and val < best.get((agent, cls), (9e9, ""))[0]:
            best[(agent, cls)] = (val, hid)
        dts = end + 1.0
        emit(ev.HypothesisDecided(
            **env(agent, dts), hypothesis_id=hid, decision="keep" if keep else "discard", by=agent,  # type: ignore[arg-type]
            reason="improved beyond sigma" if keep else (f"{status}" if val is None else "no improvement"),
            val_bpb=val, reference_val_bpb=ref, sigma=NOISE[cls],
        ))  # fmt: skip
        if keep:
            keeps.append((dts, hid, agent, cls, src))
        if i % 5 == 4:
            body = (f"# Wave {i // 5} of {agent}\n\n- tried **{knob}** = `{value}`\n- result: {status}\n\n"
                    f"Hostile: {HOSTILE} <img src=\"https://evil.example/x.png\">")
            emit(ev.NoteWritten(**env(agent, dts + 0.5), note_id=f"{hid}-note", agent=agent,  # type: ignore[arg-type]
                                title=f"{agent} notes after {hid} {HOSTILE}", body=body, refs=[hid]))

    # Validate-tier repeats of the best h100 hypothesis of two agents (confirmation runs).
    last = max(t for t, _, _ in timeline)
    for j, (agent, nrep) in enumerate([("claude-some-model", 2), ("optuna", 1)]):
        if (agent, "h100") not in best:
            continue
        bval, bhid = best[(agent, "h100")]
        orig = next(e for _, _, e in timeline if isinstance(e, ev.HypothesisProposed) and e.hypothesis_id == bhid)
        for r_i in range(nrep):
            ts = last + 10 + j * 5 + r_i
            p = ev.HypothesisProposed(
                **env(agent, ts), hypothesis_id=f"{bhid}-rep{r_i}", agent=agent, model=orig.model,  # type: ignore[arg-type]
                train_py=orig.train_py, train_py_sha256=orig.train_py_sha256, parent=bhid,
                description=f"repeat of {bhid}: {orig.description}", rationale="confirm", tier="validate",
                hw_class="h100", seed=1000 + r_i, tags=["repeat"], knobs=orig.knobs,
            )
            emit(p)
            end, _ = execute(p, "ok", round(bval + rng.gauss(0.001, NOISE["h100"]), 5))
            emit(ev.HypothesisDecided(**env(agent, end + 1), hypothesis_id=p.hypothesis_id, decision="discard",  # type: ignore[arg-type]
                                      by=agent, reason=f"confirmation run of {bhid} (decided there)"))
    last = max(t for t, _, _ in timeline)
    for runner in RUNNERS.values():
        emit(ev.RunnerLeft(**env(runner, last + 30), runner=runner, reason="stopped"))  # type: ignore[arg-type]
    for agent, _, _ in AGENTS:
        emit(ev.AgentLeft(**env(agent, last + 31), agent=agent, reason="budget"))  # type: ignore[arg-type]
    timeline.sort(key=lambda x: (x[0], x[1]))
    return FixtureRun(run, [e for _, _, e in timeline])


@dataclass
class Fixture:
    path: Path
    runs: dict[str, FixtureRun]

    @property
    def events(self) -> list[ev.Event]:
        return [e for r in self.runs.values() for e in r.events]


def write_fixture_ledger(path: Path, *, second_run: bool = True) -> Fixture:
    """Write the fixture ledger (``run-a``, and ``run-b`` unless ``second_run`` is false) to ``path``."""
    runs = {"run-a": simulate_run("run-a", seed=1, per_agent=20)}
    if second_run:
        runs["run-b"] = simulate_run("run-b", seed=2, per_agent=8, t0=T0 + 86_400)
    fx = Fixture(path, runs)
    build_ledger(path, fx.events)
    return fx
