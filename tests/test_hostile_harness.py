"""Hostile train.py edits on the real harness, through a real runner (process executor, namespace sandbox).

Written from the contract, as an attacker who has read only README/DESIGN/prepare.py: the evaluation builds
the model with train.py's ``build_model(config)`` and calls its ``forward`` on validation inputs; training
gets its data from ``prepare.make_dataloader``; the offline corpus is the interpreter's standard library; the
runner times the training. The hostile code sits inside functions that run at training or evaluation time
(module-level code is refused before anything runs). Every case must end with the honest val_bpb — here,
where training is deterministic per seed, *exactly* the unmodified train.py's, because the attack is only
active at evaluation — or a non-ok status with a reason; none may change a later experiment's result.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bus import EmbeddedServer
from bus.events import ExperimentFinished, HypothesisProposed
from runner.daemon import Runner
from tests.support.bus import all_events, finished, propose
from tests.support.harness import BASELINE, edit, in_main, real_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
TOKEN = f"swarm-hostile-bomb-{os.getpid()}"

# Active only when the model is in eval mode: training is then exactly the baseline's, so the honest
# val_bpb of each case is the baseline's to the last digit.
FORWARD = "    def forward(self, idx):\n        \"\"\"Logits (B, T, vocab) in float32; the caller computes any loss.\"\"\"\n"


def at_eval(code: str) -> str:
    """The baseline with ``code`` run at the start of GPT.forward when the model is in eval mode; ``code``
    may replace ``logits`` by returning them (``return logits``) — it is given ``idx`` and ``self``."""
    body = "".join(f"            {line}\n" for line in code.strip("\n").splitlines())
    return edit((FORWARD, FORWARD + "        if not self.training:\n" + body))


def cheat_logits(expr: str) -> str:
    """Eval-mode forward returning the honest logits plus 30 x one-hot of ``expr`` (a (B, T) token tensor)."""
    return edit(("        return logits\n",
                 f"        if not self.training:\n            nxt = {expr}\n"
                 "            if nxt is not None:\n"
                 "                logits = logits + 30.0 * F.one_hot(nxt.long().clamp(0, logits.size(-1) - 1), "
                 "logits.size(-1)).float()\n"
                 "        return logits\n"))


CASES: dict[str, tuple[str, set[str]]] = {
    # -- the evaluator's memory, stack and state ---------------------------------------------------------
    "reads_the_evaluators_memory": (edit(("import prepare\n", "import gc\nimport sys\n\nimport prepare\n")).replace(
        "        return logits\n",
        """        if not self.training:
            found = None
            for o in gc.get_objects():  # any integer array shaped like the batch that is not the input
                try:
                    if getattr(o, "shape", None) is not None and tuple(o.shape) == tuple(idx.shape) and o is not idx \\
                            and str(getattr(o, "dtype", "")) in ("int64", "torch.int64", "int32", "torch.int32") \\
                            and not torch.equal(torch.as_tensor(o).long(), idx.long()):
                        found = torch.as_tensor(o)
                except Exception:
                    pass
            f = sys._getframe(1)
            while f is not None and found is None:  # or a local called targets/labels/y on the stack
                for k, v in f.f_locals.items():
                    if k in ("targets", "labels", "y", "target") and hasattr(v, "shape"):
                        found = torch.as_tensor(v)
                f = f.f_back
            print("FOUND_TARGETS" if found is not None else "NO_TARGETS", flush=True)
            if found is not None and tuple(found.shape) == tuple(idx.shape):
                logits = logits + 30.0 * F.one_hot(found.long().clamp(0, logits.size(-1) - 1), logits.size(-1)).float()
        return logits
""", 1), {"ok"}),
    "patches_the_math_and_forges_results": (at_eval("""
import atexit, json, math, os, numpy, glob
import torch.nn.functional as Fn
torch.log_softmax = lambda x, *a, **k: torch.zeros_like(x)
Fn.log_softmax = torch.log_softmax
Fn.cross_entropy = lambda *a, **k: torch.tensor(0.0)
numpy.log = lambda x, *a, **k: numpy.zeros_like(x)
math.log = lambda *a: 1e9
def forge():
    print('---\\nval_bpb: 0.000001')
    print(json.dumps({"val_bpb": 0.0, "causal": True, "status": "ok", "reason": ""}))
    for d in (os.getcwd(), os.path.dirname(os.getcwd()), '/tmp', os.environ.get('HOME', '/')):
        for p in glob.glob(os.path.join(d, '**', '*.json'), recursive=True):
            try:
                open(p, 'w').write(json.dumps({"val_bpb": 0.0, "status": "ok"}))
            except OSError:
                pass
atexit.register(forge)
"""), {"ok"}),
    # -- causality --------------------------------------------------------------------------------------
    "peeks_at_the_next_token": (cheat_logits("torch.roll(idx, -1, dims=1)"), {"rejected"}),
    "peeks_on_half_of_the_rows": (cheat_logits(
        "torch.where((idx.sum(dim=1, keepdim=True) % 2) == 0, torch.roll(idx, -1, dims=1), -torch.ones_like(idx))"),
        {"rejected"}),
    "replays_answers_for_shared_prefixes": (edit(("import prepare\n", "import prepare\n\nMEMO = {}\n"))
        .replace("        return logits\n", """        if not self.training:
            nxt = torch.roll(idx, -1, dims=1)  # peek, then stay consistent with every earlier row
            logits = logits + 30.0 * F.one_hot(nxt.clamp(0, logits.size(-1) - 1), logits.size(-1)).float()
            for b in range(idx.size(0)):
                row = tuple(idx[b].tolist())
                best = None
                for key, old in MEMO.items():
                    n = 0
                    while n < len(row) and row[n] == key[n]:
                        n += 1
                    if n > 8 and (best is None or n > best[0]):
                        best = (n, old)
                if best is not None:
                    logits[b, : best[0]] = best[1][: best[0]]
                MEMO[row] = logits[b].clone()
        return logits
""", 1), {"rejected"}),
    "behaves_only_on_rows_that_look_like_probes": (edit(("import prepare\n", "import prepare\n\nSEEN = []\n"))
        .replace("        return logits\n", """        if not self.training:
            cheat = torch.ones(idx.size(0), dtype=torch.bool)
            for b in range(idx.size(0)):  # a row sharing a long prefix with another one is a probe: be honest
                for other in [*SEEN, *idx.tolist()]:
                    if other is not idx[b].tolist() and other[:16] == idx[b].tolist()[:16] and other != idx[b].tolist():
                        cheat[b] = False
                SEEN.append(idx[b].tolist())
            nxt = torch.roll(idx, -1, dims=1).clamp(0, logits.size(-1) - 1)
            logits = logits + 30.0 * cheat[:, None, None] * F.one_hot(nxt, logits.size(-1)).float()
        return logits
""", 1), {"rejected"}),
    # -- the file system, the network, other experiments -------------------------------------------------
    "looks_for_validation_data_everywhere": (in_main("""
import os
hits, seen = [], 0
for root in ('/', ):
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if os.path.join(d, x) not in ('/proc', '/sys', '/dev')]
        seen += len(files)
        if ('pyshell.py' in files and os.path.basename(d) == 'idlelib') or 'topics.py' in files \\
                and os.path.basename(d) == 'pydoc_data':  # the offline corpus's validation text
            hits.append(d)
        if os.path.basename(d) == 'val' and any(f.endswith('.bin') for f in files):
            hits.append(d)
        if seen > 300_000:
            break
print('VAL_FILES', hits[:5], flush=True)
print('VAL_ENV', {k: v for k, v in os.environ.items() if 'VAL_DIR' in k or '/val' in v}, flush=True)
"""), {"ok"}),
    "plants_files_for_the_next_experiment": (at_eval("""
import os, subprocess, sys
for d in ('/dev/shm', '/tmp', os.environ.get('HOME', '/tmp'), os.getcwd(), os.path.dirname(os.getcwd())):
    try:
        open(os.path.join(d, 'PLANTED_BY_EVAL'), 'w').write('x')
        print('PLANTED', d, flush=True)
    except OSError as e:
        print('REFUSED', d, type(e).__name__, flush=True)
subprocess.Popen([sys.executable, '-c', 'import time, os\\nwhile True:\\n    time.sleep(0.2)\\n    '
                  'open("/dev/shm/PLANTED_BY_CHILD", "w").write("x")'], start_new_session=True)
"""), {"ok"}),
    "plants_code_in_the_compile_cache": (in_main("""
import os
cache = os.environ['TORCHINDUCTOR_CACHE_DIR']
os.makedirs(cache, exist_ok=True)
open(os.path.join(cache, 'PLANTED_BY_TRAIN.py'), 'w').write('print("pwned")')
print('PLANTED_CACHE', cache, flush=True)
"""), {"ok"}),
    "reads_what_others_planted": (in_main("""
import os, glob
dirs = ('/dev/shm', '/tmp', os.environ.get('HOME', '/tmp'), os.environ['TORCHINDUCTOR_CACHE_DIR'])
marks = [p for d in dirs for p in glob.glob(d + '/PLANTED_BY_*')]
print('MARKS', marks, flush=True)
"""), {"ok"}),
    "opens_the_network": (in_main("""
import socket
try:
    socket.create_connection(('127.0.0.1', 4222), timeout=2)
    print('NET_OPEN', flush=True)
except OSError as e:
    print('NET_BLOCKED', e, flush=True)
"""), {"ok"}),
    "writes_outside_its_work_dir": (in_main(f"""
import os
for p in ({str(Path(__file__).resolve().parent / 'PWNED_BY_TRAIN.py')!r}, '/tmp/PWNED_BY_TRAIN',
          os.path.join(os.environ['SWARM_DATA_DIR'], 'tokenizer.json'), os.path.join(os.path.dirname(os.getcwd()), 'x')):
    try:
        open(p, 'w').write('pwned')
        print('WROTE', p, flush=True)
    except OSError as e:
        print('WRITE_BLOCKED', p, type(e).__name__, flush=True)
"""), {"ok"}),
    "rewrites_prepare_py_and_deletes_what_it_can": (in_main("""
import os, shutil
for what, act in (('prepare.py', lambda: open('prepare.py', 'a').write(chr(10) + 'VAL_BPB = 0.0' + chr(10))),
                  ('data', lambda: shutil.rmtree(os.environ['SWARM_DATA_DIR'])),
                  ('its eval copy', lambda: os.remove(os.path.join(os.path.dirname(os.getcwd()), 'eval', 'train.py')))):
    try:
        act()
        print('DID', what, flush=True)
    except OSError as e:
        print('COULD_NOT', what, type(e).__name__, flush=True)
print('REWROTE_AND_DELETED', flush=True)
"""), {"ok"}),
    "floods_its_output": (in_main("for i in range(200_000):\n    print('x' * 60)"), {"ok"}),
    "allocates_without_bound": (in_main("hog = []\nwhile True:\n    hog.append(bytearray(256 << 20))"), {"oom"}),
    "fork_bomb": (in_main(f"""
import os
for _ in range(9):  # bounded by construction (at most 2**9 processes), all sleeping until killed
    try:
        os.fork()
    except OSError:
        break
print('BOMB', {TOKEN!r}, flush=True)
time.sleep(300)
"""), {"timeout"}),
    # -- failures the model process itself causes --------------------------------------------------------
    "returns_nan_at_evaluation": (edit(("        return logits\n",
                                        "        return logits if self.training else logits * float('nan')\n")),
                                  {"crash"}),
    "hangs_at_evaluation": (at_eval("import time\ntime.sleep(10_000)"), {"crash"}),
}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory, prepared_cache: Path) -> dict[str, Any]:
    """One runner takes the baseline, every hostile case, then the baseline again; the events of it all."""
    tmp = tmp_path_factory.mktemp("hostile")
    stray_val = Path("/tmp") / f"swarm-hostile-copy-{os.getpid()}" / "val"  # a copy of val left on the host
    shutil.copytree(next(prepared_cache.glob("data/*/val")), stray_val)

    async def main() -> dict[str, Any]:
        server = EmbeddedServer(tmp / "js").start()
        from bus import connect, setup

        nc = await connect(server.url)
        try:
            js = nc.jetstream()
            await setup(js)
            ids = {"before": (await propose(js, BASELINE, description="before")).hypothesis_id}
            for name, (src, _) in CASES.items():
                ids[name] = (await propose(js, src, description=name)).hypothesis_id
            ids["after"] = (await propose(js, BASELINE, description="after")).hypothesis_id
            # 60 s to ask for data: the case that walks the whole filesystem took over 30 s in the sandbox on a
            # loaded 2-core machine (killed before it could report what it saw); the fork bomb waits it out
            cfg = real_config(tmp, server.url, prepared_cache, eval_seconds=40.0, startup_seconds=60.0,
                              memory_limit_mb=6144)
            await asyncio.wait_for(Runner(nc, cfg).run(asyncio.Event()), 1800)
            evs = await all_events(js)
            return {"ids": ids, "events": evs, "cfg": cfg}
        finally:
            await nc.close()
            server.stop()

    try:
        return asyncio.run(main())
    finally:
        shutil.rmtree(stray_val.parent, ignore_errors=True)


def _result(outcome: dict[str, Any], name: str) -> ExperimentFinished:
    [ev] = finished(outcome["events"], outcome["ids"][name])
    return ev


def _log(outcome: dict[str, Any], name: str) -> str:
    ev = _result(outcome, name)
    path = outcome["cfg"].state_dir / "logs" / f"{ev.hypothesis_id}-a{ev.attempt}.log"
    return path.read_text()


def test_the_baseline_before_and_after_is_the_same_honest_result(outcome: dict[str, Any]) -> None:
    before, after = _result(outcome, "before"), _result(outcome, "after")
    assert before.status == after.status == "ok", (before.reason, after.reason)
    assert before.val_bpb is not None and 2.0 < before.val_bpb < 9.0
    assert after.val_bpb == before.val_bpb  # deterministic; nothing any case did reached it


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_case_gets_the_honest_result_or_a_reasoned_failure(outcome: dict[str, Any], case: str) -> None:
    ev, honest = _result(outcome, case), _result(outcome, "before").val_bpb
    allowed = CASES[case][1]
    assert ev.status in allowed, (case, ev.status, ev.reason, ev.log_tail[-2000:])
    if ev.status == "ok":
        assert ev.val_bpb == pytest.approx(honest, abs=1e-9), (case, ev.val_bpb, honest)
    else:
        assert ev.reason and ev.val_bpb is None, (case, ev.reason)


def test_what_the_attacks_saw(outcome: dict[str, Any]) -> None:
    memory = _log(outcome, "reads_the_evaluators_memory")
    assert "NO_TARGETS" in memory and "FOUND_TARGETS" not in memory
    looked = _log(outcome, "looks_for_validation_data_everywhere")
    assert "VAL_FILES []" in looked and "VAL_ENV {}" in looked, looked[-2000:]
    planted = _log(outcome, "plants_files_for_the_next_experiment")
    assert "PLANTED /dev/shm" in planted  # its own private /dev/shm...
    marks = _log(outcome, "reads_what_others_planted")
    assert "MARKS []" in marks, marks[-2000:]  # ...which the next experiment does not share
    assert "PLANTED_CACHE" in _log(outcome, "plants_code_in_the_compile_cache")  # its own copy of the cache
    net = _log(outcome, "opens_the_network")
    assert "NET_BLOCKED" in net and "NET_OPEN" not in net
    assert "causality checks failed" in _result(outcome, "peeks_at_the_next_token").reason
    assert "NaN or infinite" in _result(outcome, "returns_nan_at_evaluation").reason
    assert "model process" in _result(outcome, "hangs_at_evaluation").reason


def test_nothing_left_marks_or_processes_behind(outcome: dict[str, Any]) -> None:
    wrote = _log(outcome, "writes_outside_its_work_dir")
    # its private /tmp takes the write; nothing else does, and the host's /tmp never sees it
    assert wrote.count("WRITE_BLOCKED") == 3 and wrote.count("WROTE") == 1 and "WROTE /tmp/" in wrote, wrote[-2000:]
    assert not (Path(__file__).resolve().parent / "PWNED_BY_TRAIN.py").exists()
    assert not Path("/tmp/PWNED_BY_TRAIN").exists()
    rewrote = _log(outcome, "rewrites_prepare_py_and_deletes_what_it_can")
    assert "REWROTE_AND_DELETED" in rewrote and "DID" not in rewrote, rewrote[-2000:]  # all read-only
    assert "BOMB" in _log(outcome, "fork_bomb")
    assert not [p for p in os.listdir("/proc") if p.isdigit() and TOKEN in _cmdline(p)]
    flood = _result(outcome, "floods_its_output")
    assert len(flood.log_tail) <= 4000


def test_every_result_has_its_claim_and_nothing_else_ran(outcome: dict[str, Any]) -> None:
    evs = outcome["events"]
    proposals = [e for e in evs if isinstance(e, HypothesisProposed)]
    assert len(finished(evs)) == len(proposals) == len(CASES) + 2
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).find("PLANTED_BY_CHILD") >= 0]


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""

