"""Commands that read a running swarm over the bus — ``status``, ``logs``, ``notebook``, ``dashboard`` — for
people (tables, text, a web page) and for tools and coding agents (``--json``: the shapes of docs/json.md).

Everything comes from the ledger's read API (``bus.readapi``), runner progress, and the log store, so each
works from any machine that can reach the swarm.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
import msgspec

from bus import events as ev
from swarmcli.common import _connect, _fail, _run_async, nats_option, run_option

JSON_VERSION = 1  # bump with a breaking change to any shape below (docs/json.md)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (shape: docs/json.md).")


def document(kind: str, run: str, **fields: Any) -> dict[str, Any]:
    """A JSON document of ``kind``: ``schema`` names its shape and version, then the run and the fields."""
    return {"schema": f"swarm.{kind}/{JSON_VERSION}", "run": run, "generated_ts": time.time(), **fields}


def echo_json(doc: Any) -> None:
    """Print ``doc`` (structs, dicts, lists) as indented JSON."""
    click.echo(msgspec.json.format(msgspec.json.encode(msgspec.to_builtins(doc)), indent=2).decode())


def _client(nc: Any, run: str) -> Any:
    from bus.readapi import LedgerClient

    return LedgerClient(nc, run)


# --------------------------------------------------------------------------------------------------
# status


@click.command()
@nats_option
@run_option
@click.option("-n", "--limit", default=15, show_default=True, help="Recent results to show.")
@click.option("--problems", default=5, show_default=True, help="Recent rejections and LLM errors per agent.")
@json_option
def status(nats_url: str, run: str, limit: int, problems: int, as_json: bool) -> None:
    """Best so far per hardware class, baselines and σ, runners, the agents (state, counts, cost, their
    recent rejected proposals and failed LLM calls), and the latest results."""

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(nats_url, "status")
        try:
            if as_json:
                echo_json(await status_document(nc, run, limit=limit, problems=problems))
                return
            from rich.console import Console

            from swarmcli.live import LedgerView, render_status

            snap = await LedgerView(nc, run).snapshot(limit, problems=problems)
            Console(width=None if sys.stdout.isatty() else 150).print(render_status(snap, run, problems=True))
        except TimeoutError as e:
            _fail(
                str(e) or f"no ledger answered for run {run!r}: start one with `swarm ledger` (or `swarm up`)"
            )
        finally:
            await nc.close()

    _run_async(main)


async def status_document(nc: Any, run: str, *, limit: int = 15, problems: int = 5) -> dict[str, Any]:
    """``swarm status --json``: the run at a glance (shape ``swarm.status/1``)."""
    client = _client(nc, run)
    ctx = await client.context("_status", recent_limit=limit)
    ov = await client.overview()
    agents = await client.agents(problems=problems)
    return document(
        "status", run, counts=ov.counts, runners_online=ctx.runners_online, pending=ctx.pending, best=ctx.best,
        baselines=ctx.stats, leaderboard=ov.leaderboard, runners=ov.runners, queue=ov.queue, agents=agents,
        recent=ctx.recent, program_md=ctx.program_md,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# logs


@click.command()
@nats_option
@run_option
@click.argument("hypothesis_id")
@click.option(
    "--full", is_flag=True, help="The whole log (from the log store, from any machine), not its tail."
)
@click.option(
    "--attempt", type=int, default=None, help="Which attempt's log (default: the one that counted)."
)
@click.option("--wait", "wait_seconds", type=float, default=0.0,
              help="Wait up to this many seconds for the hypothesis to finish (exit 3 if it has not).")  # fmt: skip
@click.option("--train-py", "save_to", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the hypothesis's train.py to this file (to build on it).")  # fmt: skip
@json_option
def logs(
    nats_url: str,
    run: str,
    hypothesis_id: str,
    full: bool,
    attempt: int | None,
    wait_seconds: float,
    save_to: Path | None,
    as_json: bool,
) -> None:
    """Show a hypothesis: its description, every attempt, its decision, and the log."""
    from bus.logstore import fetch_log

    async def main(stop: asyncio.Event) -> tuple[ev.HypothesisReply, dict[str, Any] | None, bool]:
        nc = await _connect(nats_url, "logs")
        try:
            client = _client(nc, run)
            try:
                h = await client.hypothesis(hypothesis_id)
                deadline = time.monotonic() + max(0.0, wait_seconds)
                # wait on the hypothesis's state: poll the ledger until it has a result (bounded by --wait)
                while h.item is not None and h.item.status is None and time.monotonic() < deadline:
                    if stop.is_set():
                        break
                    await asyncio.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
                    h = await client.hypothesis(hypothesis_id)
            except TimeoutError as e:
                _fail(str(e))
                raise
            if h.item is None:
                return h, None, False
            finishes = [a for a in h.attempts if a.kind == "finish"]
            chosen = next((a for a in finishes if a.attempt == attempt), None) if attempt is not None else (
                next((a for a in finishes if a.disposition == "result"), finishes[-1] if finishes else None))  # fmt: skip
            if attempt is not None and chosen is None:
                _fail(f"{hypothesis_id} has no finished attempt {attempt}; finished: "
                      f"{', '.join(str(a.attempt) for a in finishes) or 'none yet'}")  # fmt: skip
            log = None
            if chosen is not None:
                if full:
                    text, source = await fetch_log(nc.jetstream(), run, hypothesis_id, chosen.attempt,
                                                   log_ref=chosen.log_ref, log_tail=chosen.log_tail)  # fmt: skip
                else:
                    text, source = (
                        chosen.log_tail,
                        "the tail from the result event (--full for the whole log)",
                    )
                log = {"attempt": chosen.attempt, "full": full, "source": source, "text": text}
            return h, log, h.item.status is None and wait_seconds > 0
        finally:
            await nc.close()

    h, log, timed_out = _run_async(main)
    if h.item is None:
        _fail(f"no hypothesis {hypothesis_id!r} in run {run!r}; list recent ones with `swarm status`")
        return
    if save_to is not None:
        save_to.write_text(h.train_py)
    if as_json:
        echo_json(document("logs", run, hypothesis=h.item, rationale=h.rationale, diff=h.diff, diff_base=h.diff_base,
                           attempts=h.attempts, decisions=h.decisions, children=h.children, log=log,
                           train_py=h.train_py))  # fmt: skip
    else:
        _print_logs(h, log)
    if timed_out:
        click.echo(f"{hypothesis_id} has not finished after {wait_seconds:g}s", err=True)
        sys.exit(3)


def _print_logs(h: ev.HypothesisReply, log: dict[str, Any] | None) -> None:
    item = h.item
    assert item is not None
    click.echo(f"{item.hypothesis_id}  by {item.agent}{f' ({item.model})' if item.model else ''}  "
               f"[{item.status or 'pending'}]  val_bpb={item.val_bpb}"
               + (f"  decision={item.decision}" if item.decision else ""))  # fmt: skip
    click.echo(f"  {item.description}")
    if item.reason:
        click.echo(f"  why: {item.reason}")
    for a in h.attempts:
        click.echo(f"- {a.kind} attempt {a.attempt} on {a.runner}"
                   + (f": {a.status} ({a.disposition}) {a.reason}" if a.kind == "finish" else ""))  # fmt: skip
    for d in h.decisions:
        click.echo(f"- decided {d.decision} by {d.by}: {d.reason}")
    if log is None:
        click.echo("\n(no log yet: it has not finished)")
    else:
        click.echo(f"\n--- log of attempt {log['attempt']} ({log['source']}) ---\n{log['text'] or '(empty)'}")


# --------------------------------------------------------------------------------------------------
# notebook


@click.command()
@nats_option
@run_option
@click.option("--since", type=float, default=0.0, help="Only notes after this unix time.")
@click.option(
    "--write", "title", default=None, help="Write a note with this title (body from --body or stdin)."
)
@click.option(
    "--body", type=click.File("r"), default=None, help="Markdown body of the note (default: stdin)."
)
@click.option("--author", default="human", show_default=True, help="Agent name the note is written by.")
@click.option("--ref", "refs", multiple=True, help="Hypothesis id the note is about (repeatable).")
@click.option("--program", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Change the research direction: every agent reads this program.md at its next wave.")  # fmt: skip
@json_option
def notebook(
    nats_url: str, run: str, since: float, title: str | None, body: Any, author: str, refs: tuple[str, ...],
    program: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Read the shared notebook, write a note to it, or change the research direction."""
    from bus import publish

    program_md = program.read_text() if program is not None else None
    try:
        ev.check_token("agent", author)
    except ValueError as e:
        _fail(str(e))

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(nats_url, "notebook")
        try:
            js = nc.jetstream()
            written: dict[str, Any] = {}
            if program_md is not None:
                await publish(js, ev.ProgramChanged(run=run, source=author, program_md=program_md, by=author))
                written["program_changed"] = True
                if not as_json:
                    click.echo("research direction changed; agents pick it up at their next wave")
            if title is not None:
                text = (body or sys.stdin).read()
                note = ev.NoteWritten(run=run, source=author, note_id=f"n-{uuid.uuid4().hex[:12]}",
                                      agent=author, title=title, body=text, refs=list(refs))  # fmt: skip
                await publish(js, note)
                written["note_id"] = note.note_id
                if not as_json:
                    click.echo(f"wrote note {note.note_id}")
            if written:
                if as_json:
                    echo_json(document("notebook-write", run, **written))
                return
            try:
                notes = await _client(nc, run).notes(since_ts=since, limit=1000)
            except TimeoutError as e:
                _fail(str(e))
                return
            if as_json:
                echo_json(document("notebook", run, notes=notes))
                return
            for n in notes:
                stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(n.ts))
                click.echo(f"## {n.title}\n_{n.agent}, {stamp}_ {' '.join(n.refs)}\n\n{n.body}\n")
        finally:
            await nc.close()

    _run_async(main)


# --------------------------------------------------------------------------------------------------
# dashboard


@click.command()
@nats_option
@run_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Beyond loopback a token is required: SWARM_DASHBOARD_TOKEN, else a "
                   "random one printed in the URL.")  # fmt: skip
@click.option("--port", type=int, default=8765, show_default=True, help="Port (0: any free one).")
@click.option(
    "--poll", type=float, default=1.0, show_default=True, help="Seconds between questions to the ledger."
)
def dashboard(nats_url: str, run: str, host: str, port: int, poll: float) -> None:
    """Serve a live web dashboard of the run (read-only; works from any machine that can reach the swarm)."""
    import os

    from dashboard import DashboardConfig, DashboardError, run_dashboard

    token = os.environ.get("SWARM_DASHBOARD_TOKEN") or None
    cfg = DashboardConfig(run=run, host=host, port=port, token=token, poll=poll)

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(nats_url, "dashboard")
        try:
            await run_dashboard(nc, cfg, stop=stop, on_ready=lambda url: click.echo(
                f"dashboard of run {run!r}: {url}  (Ctrl-C to stop)", err=True))  # fmt: skip
        except DashboardError as e:
            _fail(str(e))
        finally:
            await nc.close()

    _run_async(main)
