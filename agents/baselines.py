"""Baselines: the unmodified train.py, run ``repeats`` times on every hardware class, so that each class
has a mean to beat and a σ to beat it by. Any agent may publish them; they are stored once."""

from __future__ import annotations

from nats.js import JetStreamContext

from agents.knobs import knob_values
from agents.tail import RunTail
from bus import subjects
from bus.events import BASELINE, BASELINE_TAG, HypothesisProposed, encode
from bus.trainpy import ast_sha256, sha256


def baseline_id(hw_class: str, i: int) -> str:
    return f"baseline-{hw_class}-{i}"


async def ensure_baselines(
    js: JetStreamContext,
    run: str,
    source: str,
    classes: set[str],
    base_train_py: str,
    *,
    known: set[str] | None = None,
    repeats: int = 3,
) -> list[str]:
    """Publish the unmodified train.py ``repeats`` times on every class in ``classes`` that lacks them.

    Idempotent across agents: ids are deterministic (``baseline-<class>-<i>``), ids already in ``known``
    (the proposals read from the stream) are skipped, and the publish carries ``Nats-Msg-Id`` derived from
    the id, so two agents racing within the dedup window store one copy. Every id it publishes (stored or
    found a duplicate) is added to ``known``. Returns the ids this call stored.
    """
    published = []
    sha, ast_sha = sha256(base_train_py), ast_sha256(base_train_py)
    knobs = knob_values(base_train_py)
    for cls in sorted(classes):
        for i in range(repeats):
            hid = baseline_id(cls, i)
            if known is not None and hid in known:
                continue
            ev = HypothesisProposed(
                run=run,
                source=source,
                hypothesis_id=hid,
                agent=BASELINE,
                train_py=base_train_py,
                train_py_sha256=sha,
                ast_sha256=ast_sha,
                parent=BASELINE,
                description=f"baseline: unmodified train.py, run {i + 1}/{repeats} on {cls}",
                tier="validate",
                hw_class=cls,
                seed=i,
                tags=[BASELINE_TAG],
                knobs=knobs,
            )
            ack = await js.publish(
                subjects.event_subject(ev),
                encode(ev),
                stream=subjects.STREAM,
                headers={"Nats-Msg-Id": f"{run}.{hid}"},
            )
            if not ack.duplicate:
                published.append(hid)
            if known is not None:
                known.add(hid)
    return published


class Baselines:
    """One agent's side of the baselines: queue those of the classes it sees that nobody published yet."""

    def __init__(self, js: JetStreamContext, tail: RunTail, *, run: str, agent: str, base_train_py: str,
                 repeats: int) -> None:  # fmt: skip
        self.js, self.tail = js, tail
        self.run, self.agent, self.base_train_py, self.repeats = run, agent, base_train_py, repeats
        self.known: set[str] = set()

    async def queue(self, classes: set[str]) -> None:
        """Publish the baselines of ``classes`` that nobody has published yet (idempotent)."""
        self.known.update(h for h, p in self.tail.proposals.items() if BASELINE_TAG in p.tags)
        await ensure_baselines(
            self.js, self.run, self.agent, classes, self.base_train_py, known=self.known, repeats=self.repeats
        )
