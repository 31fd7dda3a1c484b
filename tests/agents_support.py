"""Shared bits of the agents tests: a stand-in train.py, a context builder, a fake runner and a fake ledger
(for the loop tests that must not depend on ledger/ and runner/)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agents.edits import Edit
from agents.proposers.base import AgentContext, ProposalBatch, ProposalDraft, Result
from bus import publish, subjects
from bus.events import (
    ClassStats,
    ContextReply,
    ContextRequest,
    ErrorReply,
    ExperimentClaimed,
    ExperimentFinished,
    Hardware,
    HypothesisProposed,
    Reply,
    SeenReply,
    SeenRequest,
    decode,
    encode_msg,
    request_decoder,
)

STANDIN_TRAIN_PY = '''"""A tiny stand-in for train.py."""

import math

# ---------------------------------------------------------------------------
# hyperparameters: edit these directly

DEPTH = 4                 # transformer blocks
ASPECT_RATIO = 64         # model_dim = DEPTH * ASPECT_RATIO
MATRIX_LR = 0.04          # Muon lr
EMBEDDING_LR = 0.6        # AdamW lr of the embedding
WARMDOWN_RATIO = 0.5      # fraction of the budget with LR decay
TOTAL_BATCH_SIZE = 2**11  # tokens per step
WINDOW_PATTERN = "L"      # attention windows


def lr_at(progress: float) -> float:
    if progress < 1 - WARMDOWN_RATIO:
        return 1.0
    return max(0.0, (1 - progress) / WARMDOWN_RATIO)


def build_model(config: dict) -> object:
    return config


def main() -> None:
    print("---")
    print(f"val_bpb: {3.4 - math.log(DEPTH) / 100:.6f}")


if __name__ == "__main__":
    main()
'''


def make_context(source: str = STANDIN_TRAIN_PY, **kw: object) -> AgentContext:
    reply = ContextReply(
        best=[],
        recent=[],
        lineage=[],
        notes=[],
        stats=[ClassStats(hw_class="cpu", baseline_runs=3, baseline_mean=3.4, sigma=0.01, runners_online=2)],
        program_md="# program\nlower val_bpb",
        runners_online=2,
    )
    ctx = AgentContext(
        run="t", agent="a1", wave=1, program_md="PROGRAM-MARKER: lower val_bpb", reply=reply,
        parent_id="baseline", parent_source=source, parent_val_bpb=None, hw_class="cpu",
    )  # fmt: skip
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def knob_score(ev: HypothesisProposed) -> float:
    """A deterministic landscape for the fake runner: lower MATRIX_LR toward 0.02 helps."""
    lr = float(ev.knobs.get("MATRIX_LR", 0.04))
    return 3.4 + 5.0 * (lr - 0.02) ** 2 + 0.001 * (hash(ev.train_py_sha256) % 7)


@contextlib.asynccontextmanager
async def fake_runner(
    nc: NATS,
    run: str,
    score: Callable[[HypothesisProposed], float | None] = knob_score,
    *,
    hw_class: str = "cpu",
    budget_unit: str = "",
) -> AsyncIterator[list[HypothesisProposed]]:
    """Answers every proposal of the run like a runner does: a claim, then an ExperimentFinished (None from
    ``score`` = crash). A finish without its claim would not count (bus.results). Work for a named class
    runs on that class (a runner of each class), work for ``any`` on ``hw_class``. ``budget_unit``
    "tokens": results the judge treats as deterministic per seed (paired comparisons)."""
    js = nc.jetstream()
    seen: list[HypothesisProposed] = []

    async def on_msg(msg: Msg) -> None:
        ev = decode(msg.data)
        if not isinstance(ev, HypothesisProposed):
            return
        seen.append(ev)
        val = score(ev)
        cls = hw_class if ev.hw_class == "any" else ev.hw_class
        await publish(js, ExperimentClaimed(run=run, source="fake-runner", hypothesis_id=ev.hypothesis_id, attempt=1,
                                            runner="fake-runner", hardware=Hardware(hw_class=cls)))
        await publish(
            js,
            ExperimentFinished(
                run=run, source="fake-runner", hypothesis_id=ev.hypothesis_id, attempt=1, runner="fake-runner",
                status="ok" if val is not None else "crash", val_bpb=val, hw_class=cls,
                reason="" if val is not None else "exit 1", log_tail="" if val is not None else "Traceback: boom",
                budget_unit=budget_unit,
            ),
        )  # fmt: skip

    sub = await nc.subscribe(f"swarm.{run}.work.*", cb=on_msg)
    try:
        yield seen
    finally:
        await sub.unsubscribe()


@contextlib.asynccontextmanager
async def fake_ledger(
    nc: NATS, run: str, *, runners_online: int, pending: int = 0, seen: set[str] | None = None,
    stats: list[ClassStats] | None = None,
) -> AsyncIterator[list[object]]:  # fmt: skip
    """Answers ContextRequest/SeenRequest with fixed numbers; records the requests."""
    requests: list[object] = []

    async def on_msg(msg: Msg) -> None:
        req = request_decoder.decode(msg.data)
        requests.append(req)
        reply: Reply
        if isinstance(req, ContextRequest):
            reply = ContextReply(
                best=[], recent=[], lineage=[], notes=[], stats=stats or [], pending=pending,
                runners_online=runners_online,
            )  # fmt: skip
        elif isinstance(req, SeenRequest):
            reply = SeenReply(seen=[h for h in req.sha256s if h in (seen or set())])
        else:
            reply = ErrorReply(error="unsupported")
        await msg.respond(encode_msg(reply))

    sub = await nc.subscribe(subjects.api(run, "*"), cb=on_msg)
    try:
        yield requests
    finally:
        await sub.unsubscribe()


class Scripted:
    """A proposer that replays given drafts (one list per wave) and records what it was asked."""

    provider = "test"
    model = "scripted"
    strategy = "scripted"
    writes_notes = False

    def __init__(self, waves: list[list[ProposalDraft]]) -> None:
        self.waves = waves
        self.asked: list[tuple[AgentContext, int]] = []
        self.observed: list[Result] = []

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        self.asked.append((context, k))
        drafts = self.waves.pop(0) if self.waves else []
        return ProposalBatch(proposals=drafts)

    async def observe(self, results: Sequence[Result]) -> None:
        self.observed.extend(results)

    async def aclose(self) -> None:
        return None


def depth(d: int, desc: str = "", frm: int = 4) -> ProposalDraft:
    return ProposalDraft(description=desc or f"depth {d}", edits=[Edit(f"DEPTH = {frm} ", f"DEPTH = {d} ")])
