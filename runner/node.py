"""Once per node (per runner start): the pristine prepare.py copy, prepare.py's ``ensure_prepared`` run as
its own process on the data the runner was given (``--dataset`` / ``--corpus`` / ``--dataset-url`` /
``--num-shards``, else the profile's default), the world-readable training view that training gets instead
of the cache, and the check that the run's other runners of the class train on the same data."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as jsapi

from bus import subjects
from bus.client import retrying
from bus.events import EventDecodeError, RunnerJoined, check_token, decode
from harness.feed import Budget
from runner.config import RunnerConfig
from runner.errors import DataMismatch, ExecutorUnavailable, PrepareFailed
from runner.executors.base import NodeData
from runner.executors.sandbox import scrubbed_env

log = logging.getLogger("swarm.runner.node")

_PREPARE_SNIPPET = """
import dataclasses, json, sys
sys.path.insert(0, ".")
import prepare
a = json.loads(sys.argv[1])
notes = []
try:
    p = prepare.ensure_prepared(profile=a["profile"], dataset=a["dataset"], corpus=a["corpus"],
                                num_shards=a["num_shards"], base_url=a["base_url"], on_fallback=notes.append)
except prepare.PrepareError as e:
    print("SWARM_PREPARE_ERROR " + json.dumps(str(e)))
    sys.exit(3)
d = dataclasses.asdict(p) if dataclasses.is_dataclass(p) else dict(vars(p))
d = {k: (v if isinstance(v, (int, float)) else str(v)) for k, v in d.items()}
print("SWARM_PREPARED " + json.dumps({**d, "notes": notes}))
"""

# What the preparation (a download, in the runner's own trusted process, never in a step) may inherit
# beyond the scrubbed environment: proxies and certificate bundles of a node behind a proxy.
DOWNLOAD_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE")


def data_request(config: RunnerConfig, profile: str) -> dict[str, object]:
    """The arguments of prepare.py's ``ensure_prepared`` for this runner (None: the profile's default)."""
    return {"profile": profile, "dataset": config.dataset or None,
            "corpus": str(config.corpus) if config.corpus else None, "num_shards": config.num_shards,
            "base_url": config.dataset_url or None}  # fmt: skip


def data_flags(config: RunnerConfig) -> str:
    """The flags that chose this runner's data, as a person would type them (for messages)."""
    parts = [f"--dataset {config.dataset}" if config.dataset else "",
             f"--corpus {config.corpus}" if config.corpus else "",
             f"--dataset-url {config.dataset_url}" if config.dataset_url else "",
             f"--num-shards {config.num_shards}" if config.num_shards is not None else ""]  # fmt: skip
    return " ".join(p for p in parts if p) or "none (the profile's default data)"


def default_cache_dir(config: RunnerConfig) -> Path:
    if config.cache_dir is not None:
        return Path(config.cache_dir)
    env = os.environ.get("SWARM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "swarm"


def install_pristine(config: RunnerConfig) -> tuple[Path, str]:
    """Copy the runner's own prepare.py into ``state_dir/pristine`` (read-only). Returns (dir, sha256)."""
    src = Path(config.prepare_py)
    if not src.is_file():
        raise ExecutorUnavailable(
            f"no pristine prepare.py at {src}: the runner needs its own copy of the harness "
            "(set RunnerConfig.prepare_py / --prepare-py)"
        )
    data = src.read_bytes()
    pristine = config.state_dir / "pristine"
    if pristine.exists():
        for f in pristine.iterdir():
            f.chmod(0o644)
    pristine.mkdir(parents=True, exist_ok=True)
    dst = pristine / "prepare.py"
    dst.write_bytes(data)
    dst.chmod(0o444)
    return pristine, hashlib.sha256(data).hexdigest()


def build_data_view(data_dir: Path, view: Path) -> None:
    """A world-readable copy of what a step may read of the prepared data: tokenizer, token byte lengths
    and meta. No token files: training data comes from the runner's feed, batch by batch."""
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    for name in ("tokenizer.json", "token_bytes.npy", "meta.json"):
        if (data_dir / name).exists():
            shutil.copyfile(data_dir / name, view / name)
            (view / name).chmod(0o444)
    view.chmod(0o755)


def python_lib_dirs() -> list[Path]:
    """The standard-library directories of every Python installation a step can see (its own interpreter's
    and the system's), where the offline corpus's validation packages live."""
    roots = {Path(sys.base_prefix), Path(sys.prefix), Path("/usr"), Path("/usr/local")}
    found: list[Path] = []
    for root in roots:
        for lib in ("lib", "lib64"):
            found.extend(p for p in sorted((root / lib).glob("python3*")) if p.is_dir())
    return sorted({p.resolve() for p in found})


# Where an image's Python keeps its standard library (the docker executor covers these paths in every
# container: the host cannot look inside the image, and covering a path that does not exist is harmless).
IMAGE_PYTHON_LIBS = tuple(f"{root}/python3.{minor}" for root in ("/usr/lib", "/usr/local/lib", "/opt/conda/lib")
                          for minor in range(8, 16))


def hidden_val_sources(meta: dict[str, object]) -> list[Path]:
    """Directories to cover in every step: for the offline corpus, its validation packages in each Python
    installation (see prepare.OFFLINE_VAL_DIRS) on this host and where an image would keep them. Other
    corpora live in the cache, which no step sees."""
    identity = meta.get("source_identity")
    val_dirs = identity.get("val_dirs", []) if isinstance(identity, dict) else []
    host = [lib / str(d) for lib in python_lib_dirs() for d in val_dirs if (lib / str(d)).is_dir()]
    image = [Path(lib) / str(d) for lib in IMAGE_PYTHON_LIBS for d in val_dirs]
    return host + [p for p in image if p not in host]


async def prepare_node(config: RunnerConfig, profile: str, hw_class: str = "") -> NodeData:
    """Run the pristine prepare.py's ``ensure_prepared`` (data + tokenizer, cached per node)."""
    pristine, _ = install_pristine(config)
    cache = default_cache_dir(config)
    cache.mkdir(parents=True, exist_ok=True)
    env = scrubbed_env({"SWARM_CACHE_DIR": str(cache), "SWARM_PROFILE": profile, "HOME": str(Path.home()),
                        **{k: os.environ[k] for k in DOWNLOAD_ENV if k in os.environ}})
    proc = await asyncio.create_subprocess_exec(
        config.python or sys.executable,
        "-c",
        _PREPARE_SNIPPET,
        json.dumps(data_request(config, profile)),
        cwd=str(pristine),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out_b, _ = await proc.communicate()
    out = out_b.decode(errors="replace")
    lines = [ln for ln in out.splitlines() if ln.startswith("SWARM_PREPARED ")]
    errors = [ln for ln in out.splitlines() if ln.startswith("SWARM_PREPARE_ERROR ")]
    if errors:  # prepare.py's own message says what was wrong and what to do
        raise PrepareFailed(f"runner {config.runner_id}: preparing its data ({data_flags(config)}) failed: "
                            f"{json.loads(errors[-1].split(' ', 1)[1])}")
    if proc.returncode != 0 or not lines:
        raise PrepareFailed(
            f"prepare.py ensure_prepared({data_request(config, profile)}) failed (exit {proc.returncode}):\n"
            f"{out[-3000:]}"
        )
    info = json.loads(lines[-1].split(" ", 1)[1])
    for note in info.pop("notes", []):
        log.warning("runner %s: %s", config.runner_id, note)
    return await asyncio.to_thread(_node_data, config, profile, hw_class, info, pristine, cache)


def _node_data(config: RunnerConfig, profile: str, hw_class: str, info: dict[str, str], pristine: Path,
               cache: Path) -> NodeData:
    data_dir, val_dir = Path(info["data_dir"]).resolve(), Path(info["val_dir"]).resolve()
    meta = json.loads((data_dir / "meta.json").read_text())
    view = config.state_dir / "data_view"
    build_data_view(data_dir, view)
    return NodeData(
        profile=profile,
        train_view=view.resolve(),
        val_dir=val_dir,
        hidden=tuple(hidden_val_sources(meta)),
        pristine_dir=pristine.resolve(),
        cache_dir=cache.resolve(),
        dataset_fingerprint=str(meta.get("dataset_fingerprint", "")),
        tokenizer_fingerprint=str(meta.get("tokenizer_fingerprint", "")),
        vocab_size=int(meta.get("vocab_size") or 0),
        hw_class=hw_class,
        data_view=view.resolve(),
        train_dir=(data_dir / "train").resolve(),
        bos_id=int(meta.get("bos_id") or 0),
    )


def simulated_node(config: RunnerConfig, profile: str, hw_class: str = "") -> NodeData:
    base = config.state_dir / "simulated"
    for d in ("train", "val", "pristine"):
        (base / d).mkdir(parents=True, exist_ok=True)
    return NodeData(
        profile=profile,
        train_view=base / "train",
        val_dir=base / "val",
        hidden=(),
        pristine_dir=base / "pristine",
        cache_dir=base,
        dataset_fingerprint="simulated",
        tokenizer_fingerprint="simulated",
        hw_class=hw_class,
    )


# --------------------------------------------------------------------------------------------------
# the run's data: every runner of a hardware class in a run trains on the same dataset and tokenizer


def dataset_name(data: NodeData) -> str:
    """The name of the source the node's data came from (prepare.py's meta: climbmix, stdlib, corpus:x)."""
    if data.dataset_fingerprint == "simulated":
        return "simulated"
    try:
        return str(json.loads((data.data_view / "meta.json").read_text()).get("dataset", ""))
    except (OSError, ValueError):
        return ""


async def runner_joins(js: JetStreamContext, run: str, before_seq: int | None = None,
                       batch: int = 256) -> list[RunnerJoined]:
    """:func:`_runner_joins`, retried: hundreds of runners starting at once make the server answer 503
    (no responders) or time out now and then, which must not kill a runner's start."""
    return await retrying("reading the run's runners", lambda: _runner_joins(js, run, before_seq, batch))


async def _runner_joins(js: JetStreamContext, run: str, before_seq: int | None = None,
                        batch: int = 256) -> list[RunnerJoined]:
    """The run's RunnerJoined events in stream order (only those stored before stream sequence
    ``before_seq`` when given), read with an ephemeral pull consumer on the run's runner subject (what the
    runner role may do; the server removes the consumer when idle)."""
    subject = subjects.publish_pattern(RunnerJoined).replace("*", check_token("run", run), 1)
    info = await js.stream_info(subjects.STREAM, subjects_filter=subject)
    total = sum((info.state.subjects or {}).values())
    if not total:
        return []
    config = jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.NONE, deliver_policy=jsapi.DeliverPolicy.ALL,
                                  inactive_threshold=10.0, mem_storage=True, max_deliver=1)  # fmt: skip
    sub = await js.pull_subscribe(subject, stream=subjects.STREAM, config=config)
    out: list[RunnerJoined] = []
    seen = 0
    try:
        for _ in range(total // batch + 10):  # bounded: the messages counted above, in batches
            if seen >= total:
                break
            try:
                msgs = await sub.fetch(min(batch, total - seen), timeout=5.0)
            except nats.errors.TimeoutError:
                break  # fewer than counted (a purge meanwhile): what was read is all there is
            for m in msgs:
                seen += 1
                if before_seq is not None and m.metadata.sequence.stream >= before_seq:
                    continue
                try:
                    event = decode(m.data)
                except EventDecodeError:
                    continue
                if isinstance(event, RunnerJoined) and event.run == run:
                    out.append(event)
    finally:
        await sub.unsubscribe()
    return out


async def check_run_data(js: JetStreamContext, config: RunnerConfig, hw_class: str, data: NodeData,
                         budget: Budget | None = None, before_seq: int | None = None) -> None:
    """Raise :class:`DataMismatch` when a runner of ``hw_class`` joined the run (before ``before_seq``) with
    another dataset or tokenizer fingerprint than this node's, or another budget: a (run, class) fixes what
    makes results comparable (bus.results.comparison_key). Joins that do not say (runners older than the
    fields) are not compared."""
    mine = (data.dataset_fingerprint, data.tokenizer_fingerprint)
    for j in await runner_joins(js, config.run, before_seq):
        if budget is not None and j.hardware.hw_class == hw_class and j.budget \
                and (j.budget, j.budget_unit) != (budget.amount, budget.unit):
            raise DataMismatch(
                f"runner {config.runner_id} does not join run {config.run}: its {hw_class} runners train every "
                f"experiment at {Budget(j.budget_unit, j.budget)} (runner {j.runner}), this runner at {budget}. "
                "Results at different budgets compare nothing: start it with --budget "
                f"{j.budget:g} (swarm up takes the same flag), or join another run (--run NAME).")
        if j.hardware.hw_class != hw_class or not j.dataset_fingerprint:
            continue
        if (j.dataset_fingerprint, j.tokenizer_fingerprint) != mine:
            raise DataMismatch(
                f"runner {config.runner_id} does not join run {config.run}: its {hw_class} runners train on "
                f"{j.dataset or 'a dataset'} (dataset fingerprint {j.dataset_fingerprint}, tokenizer "
                f"{j.tokenizer_fingerprint}; runner {j.runner} joined with it), but this runner prepared "
                f"{dataset_name(data) or 'other data'} (dataset fingerprint {data.dataset_fingerprint}, tokenizer "
                f"{data.tokenizer_fingerprint}) from its data flags: {data_flags(config)}. Results on different "
                "data compare nothing. Start it with the run's data, using the flags that pick the data as the "
                "run's other runners do: --dataset NAME (climbmix, fineweb-edu, offline), --corpus DIR, "
                "--dataset-url URL, --num-shards N (or SWARM_DATASET, SWARM_CORPUS, SWARM_DATASET_URL, "
                "SWARM_NUM_SHARDS; swarm up takes the same flags); or join another run (--run NAME).")
