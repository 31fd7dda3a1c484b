"""``swarm up``: a whole swarm on this machine — the embedded nats-server, the ledger, runners and agents —
with a live view, a clean stop on Ctrl-C, and the report at the end.

Shutdown order (nothing lost): agents stop proposing; runners finish or give back what they hold; the
ledger projects everything in the stream; the report is written; the server stops last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from swarmcli.common import REPO_ROOT, _check_agent_specs, _fail, _run_async

DEFAULT_LLM_AGENTS = {"ANTHROPIC_API_KEY": "claude:claude-sonnet-4-5", "OPENAI_API_KEY": "openai:gpt-5"}


@dataclass
class UpConfig:
    run: str
    state_dir: Path
    agents: list[str]
    runners: int
    threads: int | None
    gpus: list[int]
    executor: str
    max_experiments: int
    budget: float | None
    baseline_repeats: int
    time_scale: float
    duration: float | None
    host: str
    port: int | None
    live: bool
    report: Path
    calibrate: bool
    extra: dict[str, Any] = field(default_factory=dict)  # AgentConfig fields for every agent
    agent_options: list[Any] = field(default_factory=list)  # agents.options.AgentOptions, one per agent
    secure: bool = False
    dashboard_port: int | None = None  # serve the web dashboard on this port (swarm up --dashboard)
    # the runners' data (runner.config.RunnerConfig: dataset, corpus, dataset_url, num_shards)
    dataset: str = ""
    corpus: Path | None = None
    dataset_url: str = ""
    num_shards: int | None = None


def _gpu_count() -> int:
    """GPUs (or MIG slices) this machine's runners can own, from nvidia-smi (runner.hardware)."""
    from runner.hardware import list_devices

    try:
        return len(list_devices())
    except Exception:
        return 0


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@click.command()
@click.option(
    "--run", default=None, help="Run name (default: a new one, up-YYYYmmdd-HHMMSS). Reuse one to resume it."
)
@click.option("--agents", "agent_specs", default=None,
              help="Comma-separated agent specs: optuna, random, claude:<model>, openai:<model>[@<base_url>]. "
                   "Default: optuna,random plus Claude/OpenAI agents whose API key is set.")  # fmt: skip
@click.option(
    "--runners", type=int, default=None, help="Runners to start (default: one per GPU, or one CPU runner)."
)
@click.option("--threads", type=int, default=None, help="Threads per CPU runner (default: cores / runners).")
@click.option(
    "--executor", type=click.Choice(["process", "docker", "simulated"]), default="process", show_default=True
)
@click.option("--max-experiments", type=int, default=10, show_default=True,
              help="Hypotheses the agents propose in all (baselines not counted).")  # fmt: skip
@click.option("--budget", type=float, default=None,
              help="Training budget per experiment, in the profile's unit: tokens on a CPU (default 65,536), "
                   "seconds on a GPU (default 300). Runners cap every hypothesis at it.")  # fmt: skip
@click.option("--budget-seconds", type=float, default=None, hidden=True,
              help="Deprecated: --budget. On a CPU, converted to tokens at a nominal 1,000 tokens/s.")
@click.option("--baseline-repeats", type=int, default=3, show_default=True,
              help="Runs of the unmodified train.py per hardware class (baseline mean and σ).")  # fmt: skip
@click.option(
    "--time-scale",
    type=float,
    default=0.01,
    show_default=True,
    help="Simulated executor: wall s per simulated s.",
)
@click.option(
    "--duration", type=float, default=None, help="Stop after this many wall seconds, whatever is left."
)
@click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".swarm"), show_default=True
)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Where the embedded nats-server listens (0.0.0.0 lets runners on other machines join).")  # fmt: skip
@click.option(
    "--port", type=int, default=None, help="Its client port (default 4222, or a free one if taken)."
)
@click.option("--live/--no-live", default=None, help="Live view (default: when stdout is a terminal).")
@click.option("--dashboard", "dashboard_port", type=int, is_flag=False, flag_value=8765, default=None,
              help="Serve the live web dashboard (on port 8765, or the one given) and print its URL.")  # fmt: skip
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML report at the end (default: <state-dir>/<run>/report.html).")  # fmt: skip
@click.option(
    "--calibrate/--no-calibrate",
    default=True,
    show_default=True,
    help="Runners measure the baseline's steps/s once.",
)
@click.option("--gpu-seconds-per-agent", type=float, default=None,
              help="Fair share: each agent stops at this many GPU-seconds of results (compare reports the shares).")  # fmt: skip
@click.option("--secure", is_flag=True,
              help="Per-role NATS users (agent, runner, ledger, admin) in <state-dir>/creds for machines that join.")  # fmt: skip
@click.option(
    "--isolated", is_flag=True, help="Agents see only their own results and the baselines, not each other's."
)
@click.option("--validate-class", default=None,
              help="Where a clear win on a screen class is re-run and must win again (screen -> validate): a "
                   "hardware class, or 'none' [default: the fastest class present].")  # fmt: skip
@click.option("--agent-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Per-agent config file (TOML): [[agent]] entries (spec, timeout, max_tokens, temperature, "
                   "tool_choice, headers, prices, ...) and [defaults]; its agents replace the default ones.")  # fmt: skip
@click.option("--dataset", default="", envvar="SWARM_DATASET", metavar="NAME",
              help="The runners' data: climbmix, fineweb-edu or offline. Default: the profile's (GPU: climbmix "
                   "where it downloads, else the offline corpus, with a message; CPU: offline).")  # fmt: skip
@click.option("--corpus", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              envvar="SWARM_CORPUS", help="Train on your own .txt/.md/.py/.parquet files (a directory) instead.")
@click.option("--dataset-url", default="", envvar="SWARM_DATASET_URL", metavar="URL",
              help="A mirror serving the dataset's parquet shards (shard_00000.parquet, ...).")  # fmt: skip
@click.option("--num-shards", type=int, default=None, envvar="SWARM_NUM_SHARDS",
              help="Training shards to download (default 10); the validation shard is pinned.")  # fmt: skip
def up(
    run: str | None,
    agent_specs: str | None,
    runners: int | None,
    threads: int | None,
    executor: str,
    max_experiments: int,
    budget: float | None,
    budget_seconds: float | None,
    baseline_repeats: int,
    time_scale: float,
    duration: float | None,
    state_dir: Path,
    host: str,
    port: int | None,
    live: bool | None,
    dashboard_port: int | None,
    report: Path | None,
    calibrate: bool,
    gpu_seconds_per_agent: float | None,
    secure: bool,
    isolated: bool,
    validate_class: str | None,
    agent_config: Path | None,
    dataset: str,
    corpus: Path | None,
    dataset_url: str,
    num_shards: int | None,
) -> None:
    """Run a whole swarm on this machine: nats-server, ledger, runners, agents; Ctrl-C stops cleanly.

    With no GPU and no API key it still runs for real: the CPU-sized train.py on the offline corpus,
    with Optuna and random-search agents. At the end it writes the HTML report.
    """
    from bus.events import check_token
    from runner.config import absolute

    run = run or time.strftime("up-%Y%m%d-%H%M%S")
    state_dir = absolute(state_dir)  # resolved once: every path derived from it crosses process boundaries
    report = absolute(report) if report is not None else None
    try:
        check_token("run", run)
    except ValueError as e:
        _fail(str(e))
    import prepare  # the one home of what a request for data may be

    try:
        prepare.check_data_request(dataset or None, str(corpus) if corpus else None, num_shards, dataset_url or None)
    except prepare.PrepareError as e:
        _fail(str(e))
    from agents.errors import SpecError
    from agents.options import AgentOptions, load_agent_file, merge

    try:
        agent_file = load_agent_file(agent_config) if agent_config is not None else None
    except SpecError as e:
        _fail(str(e))
        return
    if agent_specs:
        agents = [s.strip() for s in agent_specs.split(",") if s.strip()]
    elif agent_file is not None and agent_file.agent:
        agents = []
    else:
        agents = ["optuna", "random"] + [
            spec for key, spec in DEFAULT_LLM_AGENTS.items() if os.environ.get(key)
        ]
    defaults = agent_file.defaults if agent_file is not None else AgentOptions()
    plans = [merge(defaults, AgentOptions(spec=s)) for s in agents]
    plans += [merge(defaults, a) for a in (agent_file.agent if agent_file is not None else [])]
    agents = [str(p.spec) for p in plans]
    _check_agent_specs(agents, api_key_envs=[p.api_key_env for p in plans])
    gpus = list(range(_gpu_count())) if executor != "simulated" else []
    if budget_seconds is not None and budget is None:  # the old flag: a CPU budget is tokens now
        budget = budget_seconds if gpus or executor == "simulated" else max(2048.0, round(budget_seconds * 1000 / 2048) * 2048)
        click.echo(f"swarm up: --budget-seconds is deprecated, use --budget (here: --budget {budget:g}"
                   f"{' tokens' if not gpus and executor != 'simulated' else ''})", err=True)
    if runners is None:
        runners = len(gpus) or 1
    if gpus and runners > len(gpus):
        _fail(f"--runners {runners} but only {len(gpus)} GPUs: one runner per GPU")
    if not gpus and threads is None and executor != "simulated":
        threads = max(1, (os.cpu_count() or 1) // runners)
    cfg = UpConfig(
        run=run, state_dir=state_dir, agents=agents, runners=runners, threads=threads, gpus=gpus[:runners],
        executor=executor, max_experiments=max_experiments, budget=budget,
        baseline_repeats=baseline_repeats, time_scale=time_scale, duration=duration, host=host, port=port,
        live=sys.stdout.isatty() if live is None else live,
        report=report or state_dir / run / "report.html", calibrate=calibrate,
        extra={"max_gpu_seconds": gpu_seconds_per_agent, "isolated": isolated},
        secure=secure, agent_options=plans, dashboard_port=dashboard_port, dataset=dataset,
        corpus=absolute(corpus) if corpus else None, dataset_url=dataset_url, num_shards=num_shards,
    )  # fmt: skip
    if validate_class:  # screen -> validate (agents.promotion); "none": no promotion
        cfg.extra["validate_class"] = "" if validate_class == "none" else validate_class
    _run_async(lambda stop: run_up(cfg, stop))


async def run_up(cfg: UpConfig, stop: asyncio.Event) -> None:
    """The body of ``swarm up`` (tests call it directly with a stop event)."""
    from agents.spec import run_agent_spec
    from bus import EmbeddedServer, connect, setup
    from ledger.projector import Projector
    from ledger.service import run_ledger
    from runner.config import RunnerConfig
    from runner.daemon import run_runner
    from swarmcli.live import LedgerView, render_status

    say = click.echo
    run_dir = cfg.state_dir / cfg.run
    run_dir.mkdir(parents=True, exist_ok=True)
    port = cfg.port if cfg.port is not None else (4222 if _port_free(cfg.host, 4222) else None)
    auth = ""
    if cfg.secure:
        # per-role users for machines that join; the processes started here connect as admin
        from bus import security

        creds_dir = cfg.state_dir / "creds"
        passwords = security.generate(creds_dir)
        auth = (creds_dir / "auth.conf").read_text()
        os.environ["SWARM_NATS_USER"], os.environ["SWARM_NATS_PASSWORD"] = "admin", passwords["admin"]
        say(f"  secure: per-role users in {creds_dir} (give a runner machine runner.env, an agent machine agent.env)",
            err=True)  # fmt: skip
    server = EmbeddedServer(
        cfg.state_dir / "nats", host=cfg.host, port=port, log_file=cfg.state_dir / "nats.log", config=auth
    )
    await asyncio.to_thread(server.start)
    url = server.url if cfg.host != "0.0.0.0" else f"nats://127.0.0.1:{server.port}"
    say(f"swarm up: run {cfg.run}, nats {server.url}, state {cfg.state_dir}", err=True)
    say(f"  agents {', '.join(cfg.agents)}; {cfg.runners} {cfg.executor} runner(s)"
        + (f" with {cfg.threads} threads" if cfg.threads else "")
        + (f"; budget {cfg.budget:g}" if cfg.budget else ""), err=True)  # fmt: skip

    nc = await connect(url, name="swarm-up")
    tasks: dict[str, asyncio.Task[Any]] = {}
    ledger_stop, runner_stop, agent_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ledger_ready = asyncio.Event()
    projector_box: list[Projector] = []
    view: LedgerView | None = None
    wave_lines: list[Any] = []  # agents' WaveReports, printed by _watch when there is no live view
    agent_stats: list[Any] = []
    t0 = time.monotonic()
    try:
        await setup(nc.jetstream())
        tasks["ledger"] = asyncio.create_task(
            run_ledger(
                nc,
                cfg.state_dir / "ledger.duckdb",
                stop=ledger_stop,
                ready=ledger_ready,
                projector_out=projector_box,
            )
        )
        await _wait_or_fail(ledger_ready, tasks, "the ledger did not start")
        if cfg.dashboard_port is not None:
            tasks["dashboard"] = asyncio.create_task(_dashboard(nc, cfg, ledger_stop))
        for i in range(cfg.runners):
            gpu = cfg.gpus[i] if cfg.gpus else None
            rc = RunnerConfig(
                nats_urls=(url,), run=cfg.run, runner_id=f"{socket.gethostname()[:30]}-r{i}".replace(".", "-"),
                executor=cfg.executor, state_dir=run_dir / f"runner{i}", max_budget=cfg.budget,
                gpu=gpu, threads=cfg.threads, time_scale=cfg.time_scale, calibrate=cfg.calibrate,
                dataset=cfg.dataset, corpus=cfg.corpus, dataset_url=cfg.dataset_url, num_shards=cfg.num_shards,
            )  # fmt: skip
            tasks[f"runner{i}"] = asyncio.create_task(run_runner(rc, stop=runner_stop))
        # agents start once the runners have joined, so the first wave sees the hardware classes (and
        # queues their baselines) and sizes itself to the runners that exist
        say("  waiting for the runners to prepare data (once per machine) and join...", err=True)
        await _wait_for_runners(nc, cfg, tasks)
        shares = _split(cfg.max_experiments, len(cfg.agents))
        # runners on a machine without a GPU are of class cpu: agents address cpu work (and edit the cpu
        # profile's knobs); GPU runners serve their own class and `any`
        hw_class = await _runner_class(nc, cfg)
        for i, spec in enumerate(cfg.agents):
            options = cfg.agent_options[i] if i < len(cfg.agent_options) else None
            label = getattr(options, "name", None) or spec
            tasks[f"agent:{label}" + (f"#{i}" if f"agent:{label}" in tasks else "")] = asyncio.create_task(
                run_agent_spec(
                    nc,
                    spec,
                    run=cfg.run,
                    train_py=REPO_ROOT / "train.py",
                    stop=agent_stop,
                    seed=i,
                    max_experiments=shares[i],
                    baseline_repeats=cfg.baseline_repeats,
                    hw_class=hw_class,
                    budget=cfg.budget,
                    options=options,
                    report=wave_lines.append,
                    **cfg.extra,
                )
            )
        view = LedgerView(nc, cfg.run)
        await view.follow_progress()
        failure = await _watch(cfg, stop, tasks, view, render_status, t0, wave_lines)
    finally:
        # stop in order: agents, runners (give back what they hold), then let the ledger catch up
        agent_stop.set()
        await _gather(tasks, "agent:")
        if not cfg.live:
            for r in wave_lines:  # the waves that ended after the last look
                say(r.line())
        for name, t in tasks.items():
            if name.startswith("agent:") and t.done() and not t.cancelled() and t.exception() is None:
                agent_stats.append(t.result())
                say(f"  {t.result().summary()}", err=True)
        runner_stop.set()
        await _gather(tasks, "runner")
        if projector_box and not tasks["ledger"].done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(projector_box[0].wait_for_stream(), 60)
        if view is not None:
            with contextlib.suppress(Exception):
                snap = await view.snapshot(20)
                from rich.console import Console

                Console(width=None if sys.stdout.isatty() else 150).print(
                    render_status(snap, cfg.run, header=f"{time.monotonic() - t0:.0f} s")
                )
            await view.close()
        ledger_stop.set()
        await _gather(tasks, "ledger")
        await _gather(tasks, "dashboard")
        await nc.close()
        await asyncio.to_thread(server.stop)
    _write_report(cfg)
    if failure:
        raise click.ClickException(failure)
    ok = _ok_results(cfg)
    if ok == 0:
        raise click.ClickException(
            f"the run produced no successful experiment; see `swarm status --run {cfg.run}` while a swarm serves "
            f"this state dir, or the report above")
    if agent_stats and all(s.failed for s in agent_stats):
        raise click.ClickException(
            "no agent could propose:\n" + "\n".join(f"  {s.agent}: {s.stopped_because}; last problem: "
                                                     f"{s.last_problem or '-'}" for s in agent_stats)
        )  # fmt: skip


async def _wait_for_runners(
    nc: Any, cfg: UpConfig, tasks: dict[str, asyncio.Task[Any]], timeout: float = 900
) -> None:
    """Until ``cfg.runners`` runners are online (they prepare data and calibrate first), or one fails."""
    from bus.readapi import LedgerClient

    client = LedgerClient(nc, cfg.run, timeout=5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = [name for name, t in tasks.items() if t.done()]
        if failed:
            raise click.ClickException(f"{failed[0]} stopped before the swarm started: {_why_ended(tasks[failed[0]])}")
        with contextlib.suppress(Exception):
            if (await client.context("_up")).runners_online >= cfg.runners:
                return
        await asyncio.sleep(0.5)
    raise click.ClickException(
        f"the runners did not join within {timeout:.0f} s (see {cfg.state_dir}/{cfg.run})"
    )


async def _dashboard(nc: Any, cfg: UpConfig, stop: asyncio.Event) -> None:
    """The web dashboard (dashboard/) of this run, on loopback, or on every address with ``--host 0.0.0.0``
    (then behind a token: SWARM_DASHBOARD_TOKEN or a random one, in the printed URL)."""
    from dashboard import DashboardConfig, run_dashboard

    host = "0.0.0.0" if cfg.host == "0.0.0.0" else "127.0.0.1"
    token = os.environ.get("SWARM_DASHBOARD_TOKEN") or None
    dash = DashboardConfig(run=cfg.run, host=host, port=cfg.dashboard_port or 0, token=token)
    await run_dashboard(nc, dash, stop=stop, on_ready=lambda url: click.echo(f"  dashboard: {url}", err=True))


async def _runner_class(nc: Any, cfg: UpConfig) -> str:
    """The hardware class the agents address: the class of this machine's runners when they share one (so
    an agent searches the knobs of the profile they run), else ``any``."""
    from bus.readapi import LedgerClient

    with contextlib.suppress(Exception):
        reply = await LedgerClient(nc, cfg.run, timeout=5).sql(
            f"SELECT DISTINCT hw_class FROM runners WHERE run = '{cfg.run}' AND action = 'joined' AND hw_class IS NOT NULL")
        classes = {str(r[0]) for r in reply.rows}
        if len(classes) == 1:
            return classes.pop()
    return "any"


def _split(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


async def _wait_or_fail(event: asyncio.Event, tasks: dict[str, asyncio.Task[Any]], what: str) -> None:
    waiter = asyncio.create_task(event.wait())
    done, _ = await asyncio.wait([waiter, *tasks.values()], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for name, t in tasks.items():
            if t in done and t.exception():
                raise click.ClickException(f"{what}: {name} failed: {t.exception()}")
        raise click.ClickException(what)


async def _gather(tasks: dict[str, asyncio.Task[Any]], prefix: str, timeout: float = 600) -> None:
    chosen = [t for name, t in tasks.items() if name.startswith(prefix)]
    if not chosen:
        return
    done, pending = await asyncio.wait(chosen, timeout=timeout)
    for t in pending:
        t.cancel()
    for name, t in tasks.items():
        if t in done and not t.cancelled() and t.exception() is not None:
            click.echo(f"{name} failed: {t.exception()!r}", err=True)


async def _watch(
    cfg: UpConfig, stop: asyncio.Event, tasks: dict[str, asyncio.Task[Any]], view: Any, render: Any, t0: float,
    wave_lines: list[Any] | None = None,
) -> str:
    """Show progress until the agents are done, a service fails, the duration is up, or Ctrl-C. Returns
    why the run failed ("" when it did not): every baseline of a hardware class failed, or a service (a runner,
    the ledger, the dashboard) ended while the agents worked."""
    client = getattr(view, "client", None)
    from rich.console import Console
    from rich.live import Live

    agents = [t for name, t in tasks.items() if name.startswith("agent:")]
    services = [t for name, t in tasks.items() if not name.startswith("agent:")]
    console = Console(width=None if sys.stdout.isatty() else 150)
    live = Live(console=console, refresh_per_second=2, transient=False) if cfg.live else None
    seen_finished = 0
    if live:
        live.start()
    try:
        while not stop.is_set():
            if wave_lines and not live:  # one line per agent wave (the live view has an agents table)
                for r in wave_lines:
                    console.print(f"[{time.monotonic() - t0:5.0f} s] {r.line()}", highlight=False, soft_wrap=True)
            if wave_lines is not None:
                wave_lines.clear()
            if all(t.done() for t in agents):
                break
            if any(t.done() for t in services):
                failure = "; ".join(f"{n} ended unexpectedly ({_why_ended(t)})" for n, t in tasks.items()
                                    if t in services and t.done())  # fmt: skip
                console.print(f"[red]stopping: {failure}[/red]", soft_wrap=True)
                return failure
            if cfg.duration is not None and time.monotonic() - t0 > cfg.duration:
                console.print(f"duration of {cfg.duration:.0f} s reached; stopping")
                break
            if client is not None and (failure := await _baselines_failed(client, cfg.run)):
                console.print(f"[red]stopping: {failure}[/red]", soft_wrap=True)
                return failure
            try:
                snap = await view.snapshot()
            except Exception:  # the ledger may be busy catching up: show the last view
                snap = None
            if snap is not None:
                if live:
                    live.update(
                        render(snap, cfg.run, header=f"{time.monotonic() - t0:.0f} s  (Ctrl-C stops cleanly)")
                    )
                elif snap.counts["finished"] != seen_finished:
                    seen_finished = snap.counts["finished"]
                    latest = snap.context.recent[0] if snap.context.recent else None
                    best = min((b.val_bpb for b in snap.context.best), default=None)
                    console.print(
                        f"[{time.monotonic() - t0:5.0f} s] finished {seen_finished}/{snap.counts['proposed']}"
                        + (
                            f"  latest {latest.agent} {latest.status}"
                            + (f" val_bpb={latest.val_bpb:.4f}" if latest.val_bpb is not None else "")
                            if latest
                            else ""
                        )
                        + (f"  best {best:.4f}" if best is not None else "")
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        if live:
            live.stop()
    return ""


def _why_ended(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    e = task.exception()
    return f"{type(e).__name__}: {e}" if e is not None else "it returned"


async def _baselines_failed(client: Any, run: str) -> str:
    """When every baseline of a hardware class has finished and none is ok: what to tell the user."""
    query = ("SELECT hypothesis_id, hw_class, status, reason FROM experiments "
             "WHERE list_contains(tags, 'baseline') ORDER BY proposed_ts")
    try:
        reply = await client.sql(query, limit=1000)
    except Exception:  # the ledger may be busy: look again next time
        return ""
    by_class: dict[str, list[list[Any]]] = {}
    for row in reply.rows:
        by_class.setdefault(str(row[1]), []).append(row)
    for cls, rows in by_class.items():
        if rows and all(r[2] is not None for r in rows) and not any(r[2] == "ok" for r in rows):
            hid, _, status, reason = rows[0]
            return (f"every baseline of class {cls} failed ({len(rows)} of {len(rows)}), so no result of this run "
                    f"could mean anything. The first: {hid} ended {status}: {reason}\n"
                    f"  its log: swarm logs {hid} --run {run} --full")
    return ""


def _ok_results(cfg: UpConfig) -> int | None:
    """How many experiments of the run ended ok (None when the ledger file cannot be read)."""
    from ledger.analysis import open_ledger

    try:
        con = open_ledger(cfg.state_dir / "ledger.duckdb")
    except Exception:
        return None
    try:
        row = con.execute("SELECT count(*) FROM results WHERE run = ? AND status = 'ok'", [cfg.run]).fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def _write_report(cfg: UpConfig) -> None:
    from ledger.analysis import open_ledger, write_report

    db = cfg.state_dir / "ledger.duckdb"
    try:
        con = open_ledger(db)
        try:
            path = write_report(con, cfg.report, run=cfg.run)
        finally:
            con.close()
        click.echo(
            f"report: {path}  (open it in a browser; `swarm report --db {db} --run {cfg.run}` rewrites it)"
        )
    except Exception as e:  # the run's results are safe in the ledger; say how to retry
        click.echo(
            f"could not write the report ({e!r}); retry: swarm report --db {db} --run {cfg.run}", err=True
        )
