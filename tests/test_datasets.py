"""Datasets on every path: the data a profile trains on by default (and its offline fallback), data asked for
by name (``--dataset`` / ``--corpus`` / ``--dataset-url`` / ``--num-shards``) through ``swarm runner`` and
``swarm up`` to the result's fingerprints, the deployment files' environment, and a runner that refuses to
join a run whose runners of its class train on other data.

The "internet" is a loopback HTTP mirror serving two small parquet shards (a climbmix-style training shard
and the pinned validation shard 06542); every download test runs the real ``requests`` path against it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from nats.js import JetStreamContext

import prepare
from bus import BusConfig, EmbeddedServer, connect, publish, security, setup
from bus.events import Hardware, RunnerJoined, RunnerLeft
from runner import node
from runner.__main__ import parse_args
from runner.config import RunnerConfig
from runner.daemon import Runner
from runner.errors import DataMismatch, PrepareFailed
from runner.executors.base import NodeData
from swarmcli.deploy import render_compose
from tests.support.bus import RUN, all_events, finished, propose
from tests.support.harness import BASELINE, TINY_BUDGET, real_config
from tests.test_prepare import _Handler, _ShardServer

REPO = Path(__file__).resolve().parents[1]
SWARM = [sys.executable, "-m", "swarmcli"]
VAL = "shard_06542.parquet"  # climbmix's pinned validation shard


def _shard(seed: int, docs: int) -> bytes:
    """A parquet file with a 'text' column of made-up prose (a few hundred distinct words, so the BPE has
    something to learn)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ter", "ran", "sel", "vo", "du", "pe", "qua", "nor", "bis", "tal", "gre"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(600)})
    texts = []
    for _ in range(docs):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + "."
                     for _ in range(rng.randint(3, 12))]  # fmt: skip
        texts.append(" ".join(sentences))
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf)
    return buf.getvalue()


SHARDS = {"shard_00000.parquet": _shard(0, 400), VAL: _shard(1, 120)}


@pytest.fixture
def mirror() -> Iterator[_ShardServer]:
    """A loopback mirror of climbmix's layout serving a training shard and the pinned validation shard."""
    server = _ShardServer(("127.0.0.1", 0), _Handler)
    server.files, server.cut_once, server.requests_seen = dict(SHARDS), set(), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def url_of(server: _ShardServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/resolve/main"


def closed_url() -> str:
    """An http URL on a loopback port nothing listens on (a machine without network, as fast as it gets)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/resolve/main"


@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SWARM_DATA_DIR", "SWARM_VAL_DIR", "SWARM_MODE", "SWARM_DATASET_URL", "SWARM_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWARM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SWARM_CORPUS_MAX_BYTES", "300000")
    monkeypatch.setattr(prepare, "DOWNLOAD_BACKOFF", 0.0)
    return tmp_path / "cache"


def mirror_prepared(cache: Path, url: str) -> prepare.Prepared:
    """The mirror's data prepared in-process, in ``cache``, as a runner with ``--dataset climbmix
    --dataset-url URL --num-shards 1`` prepares it (the reference fingerprints)."""
    old = os.environ.get("SWARM_CACHE_DIR")
    os.environ["SWARM_CACHE_DIR"] = str(cache)
    try:
        return prepare.ensure_prepared("cpu", dataset="climbmix", num_shards=1, base_url=url)
    finally:
        if old is None:
            os.environ.pop("SWARM_CACHE_DIR", None)
        else:
            os.environ["SWARM_CACHE_DIR"] = old


# --------------------------------------------------------------------------------------------------
# prepare.py: the default data, the fallback, data asked for by name


def test_gpu_default_is_climbmix_where_it_downloads(mirror: _ShardServer, cache_env: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(prepare.DATASETS, "climbmix",
                        {**prepare.DATASETS["climbmix"], "base_url": url_of(mirror), "default_shards": 1})
    notes: list[str] = []
    src = prepare.choose_source("gpu", on_fallback=notes.append)
    assert (src.name, notes) == ("climbmix", [])
    assert [f for f, _ in src.identity["files"]] == ["shard_00000.parquet", VAL]
    assert src.identity["files"][1][1] == hashlib.sha256(SHARDS[VAL]).hexdigest()
    assert prepare.PROFILES["gpu"].vocab_size == 8192  # autoresearch's BPE size
    assert prepare.choose_source("cpu").name == "stdlib"  # the cpu default never downloads
    assert len(mirror.requests_seen) == 2


def test_gpu_default_falls_back_to_the_offline_corpus_with_a_message(cache_env: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_url()
    monkeypatch.setitem(prepare.DATASETS, "climbmix", {**prepare.DATASETS["climbmix"], "base_url": url})
    notes: list[str] = []
    src = prepare.choose_source("gpu", on_fallback=notes.append)
    assert src.name == "stdlib"
    [note] = notes
    for said in ("climbmix", url, "could not be downloaded", "FALLING BACK to the offline corpus",
                 "--dataset-url", "--dataset offline", str(cache_env / "raw" / "climbmix")):
        assert said in note, (said, note)


def test_data_asked_for_by_name_never_falls_back(cache_env: Path) -> None:
    url = closed_url()
    with pytest.raises(prepare.PrepareError, match=r"(?s)failed after 5 attempts.*asked for by name.*--dataset offline"):
        prepare.choose_source("gpu", dataset="climbmix", base_url=url)
    # a mirror alone asks for the profile's default dataset by name, too
    with pytest.raises(prepare.PrepareError, match="asked for by name"):
        prepare.choose_source("gpu", base_url=url)
    assert prepare.choose_source("gpu", dataset="offline").name == "stdlib"  # no download tried


@pytest.mark.parametrize(("kw", "error"), [
    ({"dataset": "climbmixx"}, "unknown dataset 'climbmixx': use one of climbmix, fineweb-edu, offline"),
    ({"dataset": "climbmix", "corpus": "."}, "both given: choose one"),
    ({"corpus": "/no/such/dir"}, "no such directory"),
    ({"dataset": "climbmix", "num_shards": 0}, "give at least 1 training shard"),
    ({"dataset": "climbmix", "num_shards": 7000}, "climbmix has 6542 training shards"),
    ({"dataset": "climbmix", "base_url": "ftp://x"}, "give the http\\(s\\) URL"),
    ({"dataset": "offline", "num_shards": 2}, "--num-shards is for a downloaded dataset"),
    ({"base_url": "http://m/x", "profile": "cpu"}, "--dataset-url is for a downloaded dataset.*name the dataset too"),
])  # fmt: skip
def test_bad_requests_for_data_are_clear_errors(kw: dict[str, Any], error: str) -> None:
    with pytest.raises(prepare.PrepareError, match=error):
        prepare.check_data_request(**kw)


def test_a_prepared_download_is_found_without_reading_its_shards(mirror: _ShardServer, cache_env: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    first = mirror_prepared(cache_env, url_of(mirror))
    meta = prepare.read_meta(first.data_dir)
    assert meta["dataset"] == "climbmix" and meta["counts"]["val"]["documents"] > 0

    def no_parse(path: Path) -> list[str]:
        raise AssertionError(f"{path} was parsed again")

    monkeypatch.setattr(prepare, "_read_parquet_texts", no_parse)
    mirror.server_close()  # and nothing is downloaded again either
    assert mirror_prepared(cache_env, url_of(mirror)) == first


def test_runners_that_start_together_download_each_shard_once(mirror: _ShardServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env.update(SWARM_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "prepare.py"), "--profile", "cpu", "--dataset", "climbmix", "--num-shards",
           "1", "--base-url", url_of(mirror)]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert len({json.loads(o.strip().splitlines()[-1])["dataset_fingerprint"] for o, _ in outs}) == 1
    assert sorted(name for name, _ in mirror.requests_seen) == sorted(SHARDS)  # one GET per shard


async def test_the_runner_logs_the_fallback_and_trains_offline(
    tmp_path: Path, prepared_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner's own preparation path when its profile's default dataset cannot be downloaded: its
    pristine prepare.py is a copy whose cpu default is climbmix at an address that answers nothing."""
    src = (REPO / "prepare.py").read_text()
    for old, new in (('DEFAULT_DATASET = {"cpu": OFFLINE_DATASET,', 'DEFAULT_DATASET = {"cpu": "climbmix",'),
                     ("https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main", closed_url()),
                     ("DOWNLOAD_BACKOFF = 1.0", "DOWNLOAD_BACKOFF = 0.0")):  # fmt: skip
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    copy = tmp_path / "harness-copy" / "prepare.py"
    copy.parent.mkdir()
    copy.write_text(src)
    cfg = RunnerConfig(runner_id="fb", state_dir=tmp_path / "state", cache_dir=prepared_cache, prepare_py=copy)
    with caplog.at_level("WARNING", logger="swarm.runner.node"):
        data = await node.prepare_node(cfg, "cpu", "cpu")
    offline = json.loads(next((prepared_cache / "data").glob("*/trainview/meta.json")).read_text())
    assert data.dataset_fingerprint == offline["dataset_fingerprint"] and node.dataset_name(data) == "stdlib"
    [warning] = [r.getMessage() for r in caplog.records if "FALLING BACK" in r.getMessage()]
    assert warning.startswith("runner fb: the cpu profile's default data, climbmix") and "--dataset offline" in warning
    # asked for by name, the same unreachable dataset is an error that says what to do
    cfg = RunnerConfig(runner_id="fb", state_dir=tmp_path / "state", cache_dir=prepared_cache, prepare_py=copy,
                       dataset="climbmix")  # fmt: skip
    with pytest.raises(PrepareFailed, match=r"(?s)runner fb: preparing its data \(--dataset climbmix\) failed: "
                                            r".*asked for by name.*--dataset offline"):
        await node.prepare_node(cfg, "cpu", "cpu")


# --------------------------------------------------------------------------------------------------
# the runner's options and the deployment files


def test_runner_options_and_their_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_args(["--dataset", "climbmix", "--dataset-url", "http://m:8000/cm", "--num-shards", "3"])
    assert (cfg.dataset, cfg.dataset_url, cfg.num_shards, cfg.corpus) == ("climbmix", "http://m:8000/cm", 3, None)
    cfg = parse_args(["--corpus", str(tmp_path)])
    assert cfg.corpus == tmp_path.resolve() and cfg.dataset == ""
    for name, value in (("SWARM_DATASET", "fineweb-edu"), ("SWARM_DATASET_URL", "http://m/fw"),
                        ("SWARM_NUM_SHARDS", "2")):  # fmt: skip
        monkeypatch.setenv(name, value)
    cfg = parse_args([])
    assert (cfg.dataset, cfg.dataset_url, cfg.num_shards) == ("fineweb-edu", "http://m/fw", 2)
    for name in ("SWARM_DATASET", "SWARM_DATASET_URL", "SWARM_NUM_SHARDS"):
        monkeypatch.setenv(name, "")
    assert parse_args([]).dataset == "" and parse_args([]).num_shards is None  # empty: the profile's default
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "climbmixx"])
    assert "unknown dataset 'climbmixx'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--profile", "cpu", "--dataset-url", "http://m/x"])
    assert "--dataset-url is for a downloaded dataset" in capsys.readouterr().err
    with pytest.raises(ValueError, match="both given"):
        RunnerConfig(dataset="climbmix", corpus=tmp_path)


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_DATASET", "fineweb-edu")
    monkeypatch.setenv("SWARM_NUM_SHARDS", "4")
    cfg = parse_args(["--dataset", "climbmix", "--num-shards", "1"])
    assert (cfg.dataset, cfg.num_shards) == ("climbmix", 1)


def test_compose_runners_take_the_data_from_the_environment() -> None:
    from tests.test_deploy import _interpolate, _runners

    for gpus, sandbox, classes in ((2, "namespace", None), (2, "docker", ["h100-sxm"] * 2), (0, "namespace", None)):
        for name, svc in _runners(render_compose(gpus, sandbox=sandbox, hw_classes=classes)).items():
            env = {k: _interpolate(v, {"SWARM_DATASET": "climbmix", "SWARM_DATASET_URL": "http://mirror/cm",
                                       "SWARM_NUM_SHARDS": "4"})
                   for k, v in svc["environment"].items()}  # fmt: skip
            assert (env["SWARM_DATASET"], env["SWARM_DATASET_URL"], env["SWARM_NUM_SHARDS"]) == (
                "climbmix", "http://mirror/cm", "4"), name
            unset = {k: _interpolate(v) for k, v in svc["environment"].items()}
            assert unset["SWARM_DATASET"] == unset["SWARM_DATASET_URL"] == unset["SWARM_NUM_SHARDS"] == ""


def test_k8s_and_skypilot_carry_the_data_settings(tmp_path: Path) -> None:
    import yaml

    config = yaml.safe_load((REPO / "deploy" / "k8s" / "config.yaml").read_text())
    assert {"SWARM_DATASET", "SWARM_DATASET_URL", "SWARM_NUM_SHARDS"} <= set(config["data"])
    runner = yaml.safe_load((REPO / "deploy" / "k8s" / "runner.yaml").read_text())
    (container,) = runner["spec"]["template"]["spec"]["containers"]
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
    task = yaml.safe_load((REPO / "deploy" / "skypilot" / "runner.yaml").read_text())
    assert {"SWARM_DATASET", "SWARM_DATASET_URL", "SWARM_NUM_SHARDS"} <= set(task["envs"])
    # setup prepares what the runners will ask for: run it with a recording python
    script = "\n".join(x for x in task["setup"].splitlines() if "pip install" not in x)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "args"
    (bin_dir / "python").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SWARM_DATASET": "climbmix",
           "SWARM_DATASET_URL": "http://mirror/cm", "SWARM_NUM_SHARDS": "3"}  # fmt: skip
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["prepare.py", "--profile", "gpu", "--dataset", "climbmix", "--base-url",
                                       "http://mirror/cm", "--num-shards", "3"]  # fmt: skip
    env.update(SWARM_DATASET="", SWARM_DATASET_URL="", SWARM_NUM_SHARDS="")
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and log.read_text().split() == ["prepare.py", "--profile", "gpu"]


# --------------------------------------------------------------------------------------------------
# swarm runner and swarm up train on the chosen data


def _runner_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env.update(SWARM_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    return env


async def test_swarm_runner_dataset_trains_on_the_mirrors_data(
    tmp_path: Path, mirror: _ShardServer, nats_server: EmbeddedServer, js: JetStreamContext, prepared_cache: Path
) -> None:
    expected = mirror_prepared(tmp_path / "reference", url_of(mirror))
    offline = json.loads(next((prepared_cache / "data").glob("*/trainview/meta.json")).read_text())
    assert expected.dataset_fingerprint != offline["dataset_fingerprint"]
    mirror.requests_seen.clear()
    base = await propose(js, BASELINE)
    cmd = [*SWARM, "runner", "--nats", nats_server.url, "--run", RUN, "--id", "r-mirror", "--hw-class", "cpu",
           "--profile", "cpu", "--dataset", "climbmix", "--dataset-url", url_of(mirror), "--num-shards", "1",
           "--burst", "--no-calibrate", "--budget", str(TINY_BUDGET), "--threads", "1", "--fetch-timeout", "0.3",
           "--state-dir", str(tmp_path / "state"), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=tmp_path, env=_runner_env(tmp_path / "cache"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode == 0, out.decode()[-4000:]
    evs = await all_events(js)
    [joined] = [e for e in evs if isinstance(e, RunnerJoined)]
    assert (joined.dataset, joined.dataset_fingerprint, joined.tokenizer_fingerprint) == (
        "climbmix", expected.dataset_fingerprint, expected.tokenizer_fingerprint)
    [res] = finished(evs, base.hypothesis_id)
    assert res.status == "ok" and res.val_bpb is not None, (res.reason, res.log_tail)
    assert (res.dataset_fingerprint, res.tokenizer_fingerprint) == (
        expected.dataset_fingerprint, expected.tokenizer_fingerprint)
    assert sorted(n for n, _ in mirror.requests_seen) == sorted(SHARDS)  # the runner downloaded them itself


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_swarm_up_dataset_trains_on_the_mirrors_data(tmp_path: Path, mirror: _ShardServer) -> None:
    expected = mirror_prepared(tmp_path / "reference", url_of(mirror))
    mirror.requests_seen.clear()
    state = tmp_path / "state"
    r = subprocess.run(
        [*SWARM, "up", "--agents", "random", "--max-experiments", "1", "--baseline-repeats", "1", "--budget",
         str(TINY_BUDGET), "--no-calibrate", "--no-live", "--run", "data", "--state-dir", str(state), "--port",
         str(_free_port()), "--threads", "1", "--dataset", "climbmix", "--dataset-url", url_of(mirror),
         "--num-shards", "1"],
        cwd=tmp_path, env=_runner_env(tmp_path / "cache"), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    con = duckdb.connect(str(state / "ledger.duckdb"), read_only=True)
    try:
        results = con.execute("SELECT status, dataset_fingerprint, tokenizer_fingerprint FROM results "
                              "WHERE run = 'data'").fetchall()  # fmt: skip
        runners = con.execute("SELECT dataset, dataset_fingerprint, tokenizer_fingerprint FROM runners "
                              "WHERE run = 'data' AND action = 'joined'").fetchall()  # fmt: skip
    finally:
        con.close()
    fps = (expected.dataset_fingerprint, expected.tokenizer_fingerprint)
    assert len(results) == 2 and any(s == "ok" for s, _, _ in results), results
    assert {(d, t) for _, d, t in results} == {fps}
    assert runners == [("climbmix", *fps)]
    assert sorted(n for n, _ in mirror.requests_seen) == sorted(SHARDS)


def test_swarm_up_refuses_bad_data_flags(tmp_path: Path) -> None:
    r = subprocess.run([*SWARM, "up", "--dataset", "climbmix", "--num-shards", "0", "--state-dir", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0 and "--num-shards 0: give at least 1 training shard" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------------
# a runner on other data than the run's does not join


def _online(evs: list[Any]) -> set[str]:
    state: dict[str, bool] = {}
    for e in evs:
        if isinstance(e, RunnerJoined | RunnerLeft):
            state[e.runner] = isinstance(e, RunnerJoined)
    return {r for r, on in state.items() if on}


@pytest.fixture
def mirror_cache(tmp_path: Path, mirror: _ShardServer) -> tuple[Path, str, prepare.Prepared]:
    """The mirror's data prepared in a cache of its own (as a runner with --dataset climbmix would)."""
    cache = tmp_path / "mirror-cache"
    return cache, url_of(mirror), mirror_prepared(cache, url_of(mirror))


async def test_a_runner_on_other_data_says_so_and_does_not_join(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path,
    mirror_cache: tuple[Path, str, prepare.Prepared],
) -> None:  # fmt: skip
    first = Runner(nc, real_config(tmp_path, nats_server.url, prepared_cache, runner_id="offline-1"))
    await first.start()
    assert first.node is not None
    same = Runner(nc, real_config(tmp_path, nats_server.url, prepared_cache, runner_id="offline-2"))
    await same.start()  # the same data joins
    cache, url, mp = mirror_cache
    other_cfg = real_config(tmp_path, nats_server.url, cache, runner_id="mirror-1", dataset="climbmix",
                            dataset_url=url, num_shards=1)  # fmt: skip
    other = Runner(nc, other_cfg)
    with pytest.raises(DataMismatch) as err:
        await other.run(asyncio.Event())
    msg = str(err.value)
    for said in (first.node.dataset_fingerprint, first.node.tokenizer_fingerprint, mp.dataset_fingerprint,
                 mp.tokenizer_fingerprint, "stdlib", "climbmix", "--dataset NAME", "--corpus DIR",
                 "--dataset-url URL", "--num-shards N", f"--dataset climbmix --dataset-url {url} --num-shards 1",
                 "does not join run t"):  # fmt: skip
        assert said in msg, (said, msg)
    evs = await all_events(js)
    assert not [e for e in evs if isinstance(e, RunnerJoined | RunnerLeft) and e.runner == "mirror-1"]
    # on another hardware class its data is its own class's
    elsewhere = Runner(nc, real_config(tmp_path, nats_server.url, cache, runner_id="mirror-2", hw_class="cpu-big",
                                       dataset="climbmix", dataset_url=url, num_shards=1))  # fmt: skip
    await elsewhere.start()
    assert _online(await all_events(js)) == {"offline-1", "offline-2", "mirror-2"}
    for r in (first, same, elsewhere):
        await r.shutdown("test over")


async def test_runners_on_different_data_starting_together_one_joins(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path,
    mirror_cache: tuple[Path, str, prepare.Prepared],
) -> None:  # fmt: skip
    """Both may pass the check before either joins: then the stream's order decides, and the later one
    leaves at once with the reason."""
    cache, url, _ = mirror_cache
    a = Runner(nc, real_config(tmp_path, nats_server.url, prepared_cache, runner_id="a"))
    b = Runner(nc, real_config(tmp_path, nats_server.url, cache, runner_id="b", dataset="climbmix",
                               dataset_url=url, num_shards=1))  # fmt: skip
    outcomes = await asyncio.gather(a.start(), b.start(), return_exceptions=True)
    refused = [r for r, o in zip((a, b), outcomes, strict=True) if isinstance(o, DataMismatch)]
    assert len(refused) == 1 and sum(o is None for o in outcomes) == 1, outcomes
    evs = await all_events(js)
    online = _online(evs)
    assert online == {"a", "b"} - {refused[0].id}
    left = [e for e in evs if isinstance(e, RunnerLeft) and e.runner == refused[0].id]
    assert all("does not join" in e.reason for e in left)  # if it had joined, it left saying why
    for r in (a, b):
        await r.shutdown("test over")
    assert _online(await all_events(js)) == set()


async def test_the_check_reads_the_stream_as_the_runner_role_in_stream_order(tmp_path: Path) -> None:
    passwords = security.generate(tmp_path / "creds")
    server = EmbeddedServer(tmp_path / "js", config=(tmp_path / "creds" / "auth.conf").read_text()).start()
    try:
        admin = await connect(BusConfig(servers=(server.url,), user="admin", password=passwords["admin"]))
        runner = await connect(BusConfig(servers=(server.url,), user="runner", password=passwords["runner"]))
        try:
            await setup(admin.jetstream())
            hw = Hardware(hw_class="h100")
            acks = [await publish(admin.jetstream(), RunnerJoined(
                        run="r", source=f"x{i}", runner=f"x{i}", hardware=hw, dataset="climbmix",
                        dataset_fingerprint=f"fp{i % 2}", tokenizer_fingerprint="tok"))
                    for i in range(300)]  # fmt: skip
            cfg = RunnerConfig(run="r", runner_id="me", state_dir=tmp_path / "s")
            data = NodeData("gpu", tmp_path, tmp_path, (), tmp_path, tmp_path, dataset_fingerprint="fp1",
                            tokenizer_fingerprint="tok")  # fmt: skip
            js = runner.jetstream()
            assert len(await node.runner_joins(js, "r")) == 300  # several batches, as the runner role
            await node.check_run_data(js, cfg, "h100", data, before_seq=acks[0].seq)  # nothing earlier
            with pytest.raises(DataMismatch, match="runner x0 joined with it"):
                await node.check_run_data(js, cfg, "h100", data, before_seq=acks[1].seq)
            await node.check_run_data(js, cfg, "a100", data)  # another class: not compared
            old = RunnerJoined(run="r", source="old", runner="old", hardware=Hardware(hw_class="a100"))
            await publish(admin.jetstream(), old)  # a runner older than the fields: not compared
            await node.check_run_data(js, cfg, "a100", data)
        finally:
            await runner.close()
            await admin.close()
    finally:
        server.stop()

