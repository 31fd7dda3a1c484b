"""``swarm``: one command line for the research swarm.

Every subcommand that talks to a running swarm takes ``--nats`` (or SWARM_NATS_URL) and ``--run`` (or
SWARM_RUN). ``swarm up`` runs a whole swarm on this machine; the other subcommands are its parts, for
running across machines, and its tools (status, logs, report, compare, replay, export, notebook).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from bus import events as ev
from bus.trainpy import ast_sha256, sha256
from swarmcli.common import (
    REPO_ROOT,
    _check_agent_specs,
    _connect,
    _fail,
    _run_async,
    nats_option,
    run_option,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """A research swarm: agents propose train.py edits, runners train them under a fixed budget, and an
    event ledger keeps every result.

    \b
    Start here:   swarm up                      (everything on this machine; Ctrl-C stops cleanly)
    Look:         swarm status | swarm logs H | swarm notebook
    Analyse:      swarm report | swarm compare | swarm export | swarm replay
    Across machines: swarm ledger / swarm runner / swarm agent against one NATS cluster (README).
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# --------------------------------------------------------------------------------------------------
# services


@cli.command()
@nats_option
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=Path(".swarm/ledger.duckdb"),
              show_default=True, help="The ledger's DuckDB file (only this process opens it for writing).")  # fmt: skip
def ledger(nats_url: str, db: Path) -> None:
    """Run the ledger: project the event stream into DuckDB and answer the read API."""
    from ledger.service import run_ledger
    from runner.config import absolute

    db = absolute(db)
    db.parent.mkdir(parents=True, exist_ok=True)

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(nats_url, "ledger")
        try:
            click.echo(f"ledger: projecting into {db}; Ctrl-C to stop", err=True)
            await run_ledger(nc, db, stop=stop)
        finally:
            await nc.close()

    _run_async(main)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def runner(ctx: click.Context) -> None:
    """Run one runner daemon (one per GPU: --gpu N). Options: `swarm runner --help`.

    Claims work of its hardware class (then `any`), trains in a sandbox (process or docker executor),
    evaluates the saved weights itself, and publishes the result. SIGTERM gives the running item back.
    """
    from runner.__main__ import main as runner_main

    args = list(ctx.args)
    if "-h" in args or "--help" in args:
        # the options are the runner's own (runner/__main__.py): show them, under this command's name
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            runner_main(["--help"])
        click.echo(ctx.get_help().split("\nOptions:")[0].rstrip() + "\n")
        click.echo(out.getvalue().replace("python -m runner", "swarm runner"), nl=False)
        ctx.exit(0)
    if "--nats" not in args and os.environ.get("SWARM_NATS_URL"):
        args += ["--nats", os.environ["SWARM_NATS_URL"]]
    if "--run" not in args and os.environ.get("SWARM_RUN"):
        args += ["--run", os.environ["SWARM_RUN"]]
    sys.argv[0] = "swarm runner"
    runner_main(args)


@cli.command()
@nats_option
@run_option
@click.option("--spec", "specs", multiple=True,
              help="optuna | random | claude:<model> | openai:<model> | openai:<model>@<base_url>; "
                   "repeat or comma-separate for several agents.")  # fmt: skip
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Per-agent config file (TOML): [[agent]] entries with a spec and options, and [defaults] "
                   "for every agent (README: Local and proxied models).")  # fmt: skip
@click.option("--name", default=None, help="Agent id (with one --spec; default: derived from the spec).")
@click.option("--max-experiments", type=int, default=None, help="Stop after proposing this many.")
@click.option("--max-waves", type=int, default=None, help="Stop after this many waves.")
@click.option("--max-cost", type=float, default=None, help="Stop after spending this many API dollars.")
@click.option("--hw-class", default="any", show_default=True, help="Hardware class of screen-tier proposals.")
@click.option("--validate-class", default=None,
              help="Where a clear win on a screen class is re-run and must win again (screen -> validate): a "
                   "hardware class, or 'none' [default: the fastest class present].")  # fmt: skip
@click.option("--program", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The research direction (default: the repo's program.md).")  # fmt: skip
@click.option("--train-py", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=REPO_ROOT / "train.py", show_default=True, help="The baseline train.py.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout", type=float, default=None,
              help="Seconds per HTTP request to the model server [default: 300].")  # fmt: skip
@click.option("--max-tokens", type=int, default=None, help="Most tokens the model may answer with [default: 8192].")
@click.option("--temperature", type=float, default=None, help="Sampling temperature [default: the server's].")
@click.option("--tool-choice", type=click.Choice(["required", "auto"]), default=None,
              help="Force a tool call (required) or let the model choose (auto; for servers that refuse "
                   "'required' -- the agent also falls back by itself) [default: required].")  # fmt: skip
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="Extra HTTP header for the model server (a proxy's key); repeatable; $VAR is expanded.")  # fmt: skip
@click.option("--price", "prices", multiple=True, metavar="MODEL=IN,OUT",
              help="Dollars per million input/output tokens of a model (a local or proxied model is $0 "
                   "unless priced); repeatable.")  # fmt: skip
def agent(
    nats_url: str,
    run: str,
    specs: tuple[str, ...],
    config_file: Path | None,
    name: str | None,
    max_experiments: int | None,
    max_waves: int | None,
    max_cost: float | None,
    hw_class: str,
    validate_class: str | None,
    program: Path | None,
    train_py: Path,
    seed: int,
    timeout: float | None,
    max_tokens: int | None,
    temperature: float | None,
    tool_choice: str | None,
    headers: tuple[str, ...],
    prices: tuple[str, ...],
) -> None:
    """Run researcher agents: read the ledger, propose waves of experiments, decide keep/discard.

    Prints one line per wave (proposed, rejected with the first reason, LLM errors with the status code
    and URL) and a summary per agent. Exits non-zero when an agent ends having published nothing.
    Ctrl-C (or SIGTERM) cancels the model call in flight and stops within seconds; twice: at once.
    """
    from agents.errors import SpecError
    from agents.options import AgentOptions, cli_options, load_agent_file, merge
    from agents.spec import run_agent_spec

    try:
        flags = cli_options(timeout=timeout, max_tokens=max_tokens, temperature=temperature,
                            tool_choice=tool_choice, headers=headers, prices=prices, max_waves=max_waves,
                            validate_class=validate_class)  # fmt: skip
        file = load_agent_file(config_file) if config_file is not None else None
    except SpecError as e:
        _fail(str(e))
        return
    defaults = file.defaults if file is not None else AgentOptions()
    plans = [merge(defaults, AgentOptions(spec=s.strip()), flags) for spec in specs for s in spec.split(",") if s.strip()]
    plans += [merge(defaults, a, flags) for a in (file.agent if file is not None else [])]
    if not plans:
        _fail("no agent to run: give --spec (e.g. --spec optuna) or a --config file with [[agent]] entries")
    if name is not None:
        if len(plans) != 1:
            _fail("--name names one agent: give exactly one --spec (or set name in the config file)")
        plans[0] = merge(plans[0], AgentOptions(name=name))
    _check_agent_specs([str(p.spec) for p in plans], api_key_envs=[p.api_key_env for p in plans])

    def on_wave(report: Any) -> None:
        click.echo(report.line(), err=True)

    async def main(stop: asyncio.Event) -> list[Any]:
        nc = await _connect(nats_url, "agents")
        try:
            tasks = [
                run_agent_spec(nc, str(p.spec), run=run, train_py=train_py, stop=stop, program_md=program,
                               seed=seed + i, max_experiments=max_experiments, max_cost_usd=max_cost,
                               hw_class=hw_class, options=p, report=on_wave)
                for i, p in enumerate(plans)
            ]  # fmt: skip
            return list(await asyncio.gather(*tasks, return_exceptions=True))
        finally:
            await nc.close()

    problems = []
    for p, result in zip(plans, _run_async(main), strict=True):
        if isinstance(result, SpecError):
            problems.append(str(result))
        elif isinstance(result, BaseException):
            problems.append(f"{p.name or p.spec}: failed: {result}")
        else:
            click.echo(result.summary(), err=True)
            if result.failed:
                problems.append(f"{result.agent} published nothing: {result.stopped_because}"
                                + (f"; last problem: {result.last_problem}" if result.last_problem else ""))  # fmt: skip
    if problems:
        _fail("\n".join(problems))


# --------------------------------------------------------------------------------------------------
# people's commands


@cli.command()
@nats_option
@run_option
@click.argument("train_py", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-m", "--description", required=True, help="What this change tries, in one line.")
@click.option("--parent", default=ev.BASELINE, show_default=True, help="Parent hypothesis id.")
@click.option("--hw-class", default="any", show_default=True)
@click.option("--tier", type=click.Choice(["screen", "validate"]), default="screen", show_default=True)
@click.option("--author", default="human", show_default=True, help="Agent name recorded for this hypothesis.")
@click.option("--model", default="human", show_default=True,
              help="Model recorded for it (a coding agent: its model, for `swarm compare --by model`).")  # fmt: skip
@click.option("--rationale", default="", help="Why this change should help (shown with its results).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the hypothesis id and stream sequence.")
def submit(
    nats_url: str,
    run: str,
    train_py: Path,
    description: str,
    parent: str,
    hw_class: str,
    tier: str,
    author: str,
    model: str,
    rationale: str,
    as_json: bool,
) -> None:
    """Enqueue a train.py by hand: it runs like any agent's hypothesis."""
    from bus import publish

    source = train_py.read_text()
    try:
        compile(source, str(train_py), "exec")
    except SyntaxError as e:
        _fail(f"{train_py} does not compile: {e}")
    try:
        ev.check_token("hardware class", hw_class)
        ev.check_token("agent", author)
    except ValueError as e:
        _fail(str(e))
    base = (REPO_ROOT / "train.py").read_text()
    import difflib

    diff = "".join(
        difflib.unified_diff(base.splitlines(True), source.splitlines(True), "a/train.py", "b/train.py")
    )
    hid = f"h-{uuid.uuid4().hex[:12]}"
    event = ev.HypothesisProposed(
        run=run, source=author, hypothesis_id=hid, agent=author, model=model, train_py=source, rationale=rationale,
        train_py_sha256=sha256(source), ast_sha256=ast_sha256(source), parent=parent, diff=diff,
        description=description, tier=tier, hw_class=hw_class,  # type: ignore[arg-type]
    )  # fmt: skip

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(nats_url, "submit")
        try:
            ack = await publish(nc.jetstream(), event)
            if as_json:
                from swarmcli.read import document, echo_json

                echo_json(document("submit", run, hypothesis_id=hid, seq=ack.seq, agent=author, model=model))
            else:
                click.echo(f"submitted {hid} (stream seq {ack.seq}); follow it with: swarm logs {hid}")
        finally:
            await nc.close()

    _run_async(main)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path(".swarm/creds"),
              show_default=True)  # fmt: skip
def creds(out: Path) -> None:
    """Generate per-role NATS users (agent, runner, ledger, admin) for a multi-machine swarm.

    Writes auth.conf (include it in each nats-server's config) and <role>.env files (mode 0600) to
    hand to each machine. Running it again keeps the existing passwords.
    """
    from bus import security

    security.generate(out)
    click.echo(f"wrote {out}/auth.conf and {', '.join(f'{r}.env' for r in security.ROLES)} (mode 0600)")
    click.echo(
        f"add `include {out.resolve()}/auth.conf` to the nats-server config (deploy/nats/cluster.conf)"
    )


# --------------------------------------------------------------------------------------------------
# analysis


def _open_db(db: Path) -> Any:
    from ledger.analysis import open_ledger

    if not db.exists():
        _fail(f"no ledger file at {db}; pass --db (swarm up writes .swarm/<run>/ledger.duckdb)")
    return open_ledger(db)


@cli.command()
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Ledger DuckDB file."
)
@click.option("--run", default=None, help="Run to report on (default: every run in the ledger).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True)  # fmt: skip
@click.option("--png", "png_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write the report's figures as PNG files into this directory.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report's figures as JSON (docs/json.md).")
def report(db: Path, run: str | None, out: Path, png_dir: Path | None, as_json: bool) -> None:
    """Write one self-contained HTML report (opens offline): progress, agents, runners, leaderboard, notebook;
    with --png its figures as PNG files, with --json its numbers for tools."""
    from ledger.analysis import latest_run, load_run, summary, write_pngs, write_report
    from swarmcli.read import echo_json

    con = _open_db(db)
    run = run or latest_run(con)
    path = write_report(con, out, run=run)
    pngs = write_pngs(load_run(con, run), png_dir) if png_dir is not None and run is not None else []
    if as_json:
        doc = summary(load_run(con, run)) if run is not None else {"schema": "swarm.report/1", "run": None}
        echo_json({**doc, "html": str(path), "png": [str(p) for p in pngs]})
        return
    click.echo(f"wrote {path}")
    for p in pngs:
        click.echo(f"wrote {p}")


@cli.command()
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Ledger DuckDB file."
)
@click.option("--runs", default=None, help="Comma-separated runs (default: all runs in the ledger).")
@click.option("--by", type=click.Choice(["agent", "model"]), default="agent", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def compare(db: Path, runs: str | None, by: str, as_json: bool) -> None:
    """Agents or models head to head: best val_bpb with a CI, improvement per GPU-hour, $ per improvement,
    crash rate, and the GPU-seconds each one got (the fairness figure)."""
    import json

    from rich.console import Console

    from ledger.analysis.compare import compare as do_compare
    from ledger.analysis.compare import render_table

    con = _open_db(db)
    result = do_compare(con, runs=runs.split(",") if runs else None, by=by)
    if as_json:
        click.echo(json.dumps({"schema": "swarm.compare/1", **result.to_dict()}, indent=2, default=str))
    else:
        Console(width=None if sys.stdout.isatty() else 150).print(render_table(result))


@cli.command()
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Ledger DuckDB file."
)
@click.option("--parquet", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write every table to Parquet files in this directory (an archive `swarm replay` reads).")  # fmt: skip
@click.option("--git", "git_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a git repo: each kept hypothesis a commit on a per-agent branch <run>/<agent>.")  # fmt: skip
@click.option("--run", default=None, help="Only this run (git export).")
def export(db: Path, parquet: Path | None, git_dir: Path | None, run: str | None) -> None:
    """Export the ledger: Parquet (DuckDB CLI, pandas, polars read it) and/or a git history of kept changes."""
    if parquet is None and git_dir is None:
        _fail("say what to export: --parquet DIR and/or --git DIR")
    con = _open_db(db)
    if parquet is not None:
        from ledger.export import export_parquet

        counts = export_parquet(con, parquet)
        click.echo(f"wrote {len(counts)} tables ({sum(counts.values())} rows) to {parquet}")
    if git_dir is not None:
        from ledger.analysis import export_git

        heads = export_git(con, git_dir, run=run)
        for branch, sha in sorted(heads.items()):
            click.echo(f"{branch} {sha}")


@cli.command()
@nats_option
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The new DuckDB file to build (must not exist).")  # fmt: skip
@click.option("--archive", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Rebuild from a Parquet archive (swarm export --parquet) instead of the stream.")  # fmt: skip
@click.option("--since", default=None, help="Stream replay from this time (ISO 8601, e.g. 2026-11-22T10:00).")
def replay(nats_url: str, db: Path, archive: Path | None, since: str | None) -> None:
    """Rebuild a ledger from the event stream (from the start or a time) or from an exported archive."""
    import datetime as dt

    from ledger.replay import replay_archive, replay_stream
    from ledger.schema import connect_db

    if db.exists():
        _fail(f"{db} exists; replay builds a fresh ledger: pick a new --db path")
    start = None
    if since:
        try:
            start = dt.datetime.fromisoformat(since)
        except ValueError:
            _fail(f"--since {since!r} is not an ISO 8601 time such as 2026-11-22T10:00")
    start_ts = None if start is None else (start if start.tzinfo else start.astimezone()).timestamp()
    db.parent.mkdir(parents=True, exist_ok=True)
    con = connect_db(str(db))
    t0 = time.perf_counter()
    if archive is not None:
        last = replay_archive(archive, con)
    else:

        async def main(stop: asyncio.Event) -> int:
            nc = await _connect(nats_url, "replay")
            try:
                return await replay_stream(nc.jetstream(), con, start_time=start_ts)
            finally:
                await nc.close()

        last = _run_async(main)
    con.close()
    click.echo(f"replayed the stream up to sequence {last} into {db} in {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------------------------------
# the embedded default

from swarmcli.deploy import deploy  # noqa: E402  (`swarm deploy compose`)
from swarmcli.read import dashboard, logs, notebook, status  # noqa: E402  (the read commands)
from swarmcli.simulate import simulate  # noqa: E402  (`swarm simulate`)
from swarmcli.up import up  # noqa: E402  (registers `swarm up`)

cli.add_command(up)
cli.add_command(simulate)
cli.add_command(deploy)
for _command in (status, logs, notebook, dashboard):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="swarm")


if __name__ == "__main__":
    main()
