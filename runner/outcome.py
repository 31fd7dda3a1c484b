"""How an experiment ended: the pure classifier from what the runner observed to a status and a reason.

Every input here was measured by the runner (the step's exit and clock, the feed's token count and clock,
the trusted evaluation); what train.py printed is parsed only for forensics (steps, its own val_bpb) and for
the failure signs it cannot fake to its advantage (a NaN exit, an out-of-memory message).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.events import Status
from bus.trainpy import NAN_EXIT_CODE
from harness.evaluation import EvalResult
from harness.feed import FeedStats
from runner import contract
from runner.executors.steps import StepResult
from runner.jobs import Deadlines


@dataclass
class Outcome:
    status: Status
    reason: str = ""
    val_bpb: float | None = None
    training_seconds: float = 0.0  # the runner's clock: first counted batch -> process end
    tokens: int = 0  # tokens the feed served after warm-up
    step_seconds: float = 0.0  # the training process's whole life
    eval_seconds: float = 0.0
    num_params: int = 0
    output: str = ""  # the training step's output (train.py's printed summary, for forensics)
    log_tail: str = ""
    evaluation: EvalResult | None = None
    extra: dict[str, float] = field(default_factory=dict)


def training_window(res: StepResult, feed: FeedStats) -> float:
    """Seconds from the first counted batch to the end of the process (0 if it asked for no data)."""
    return res.ended - feed.counted_start if feed.counted_start is not None else 0.0


def classify_training(res: StepResult, feed: FeedStats, deadlines: Deadlines, *, killed: tuple[Status, str] | None,
                      model_saved: bool, tail_chars: int) -> Outcome | None:
    """The outcome of the training step, or None when it trained within its budget and saved weights (then
    the trusted evaluation decides)."""
    secs = training_window(res, feed)
    tail = contract.traceback_tail(res.output, tail_chars)

    def end(status: Status, reason: str, log_tail: str = tail) -> Outcome:
        return Outcome(status, reason, training_seconds=secs, tokens=feed.counted_tokens, step_seconds=res.seconds,
                       output=res.output, log_tail=log_tail)

    if killed is not None:
        return end(*killed, log_tail=res.output[-tail_chars:])
    if res.timed_out:
        return end("timeout", f"killed at the hard limit of {deadlines.total:.0f} s")
    summary = contract.parse_summary(res.output)
    if res.exit_code != 0:
        if res.oom_killed or contract.looks_like_oom(res.output[-20000:]):
            return end("oom", f"out of memory (exit {res.exit_code})")
        if res.exit_code == NAN_EXIT_CODE or summary.nan_step is not None:
            return end("nan", f"nan loss at step {summary.nan_step}")
        why = f"train.py exited with {res.exit_code}"
        if err := contract.last_error(res.output):
            why += f": {err}"
        if feed.refused:
            why += f" (the runner's data feed refused its request: {feed.refused})"
        return end("crash", why)
    if summary.nan_step is not None:
        return end("nan", f"nan loss at step {summary.nan_step}")
    limit = deadlines.window + deadlines.tolerance
    if feed.counted_start is not None and secs > limit:
        return end("over_budget", f"trained {secs:.1f} s after its first counted batch, over the budget's "
                       f"{deadlines.window:.1f} s + {deadlines.tolerance:.1f} s tolerance")
    if feed.first_request is None and res.seconds > deadlines.startup + limit:
        return end("over_budget", f"ran {res.seconds:.1f} s without asking the runner for training data "
                       f"(allowed {deadlines.startup + limit:.1f} s)")
    if not model_saved:
        return end("crash", "train.py exited 0 but saved no model.pt in SWARM_OUT_DIR")
    return None


def classify_evaluation(trained: Outcome, result: EvalResult, tail_chars: int) -> Outcome:
    """The final outcome once the trusted evaluation ran (``trained``: the training figures)."""
    trained.evaluation = result
    trained.eval_seconds = result.eval_seconds
    trained.num_params = result.num_params
    if result.status == "ok" and result.val_bpb is not None:
        trained.status, trained.val_bpb = "ok", result.val_bpb
        trained.log_tail = trained.output[-tail_chars:]
        return trained
    if result.status == "noncausal":
        trained.status, trained.reason = "rejected", f"non-causal model: {result.reason}"
        return trained
    trained.status, trained.reason = "crash", f"trusted evaluation failed: {result.reason}"
    return trained
