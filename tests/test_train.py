"""train.py under the harness: the cpu profile trains, the trusted evaluation is honest, runner mode hides val."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import prepare

try:
    from harness_helpers import TRAIN_PY, harness_env, make_variant, parse_block, parse_progress, run_py
except ImportError:  # tests/ collected as a package
    from tests.harness_helpers import TRAIN_PY, harness_env, make_variant, parse_block, parse_progress, run_py

BLOCK_KEYS = {"training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M", "num_steps",
              "num_params_M", "profile", "dataset_fingerprint", "tokenizer_fingerprint"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A prepared small offline dataset (shared with test_prepare's cache) and one by-hand cpu run."""
    cache = tmp_path_factory.getbasetemp() / "swarm-cache"
    work = tmp_path_factory.mktemp("train")
    env = harness_env(cache)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            if k.startswith("SWARM_"):
                mp.setenv(k, v)
        for name in ("SWARM_DATA_DIR", "SWARM_VAL_DIR", "SWARM_MODE"):
            mp.delenv(name, raising=False)
        prep = prepare.ensure_prepared()
        train_py = make_variant(work / "small" / "train.py")
        proc = run_py(train_py, {**env, "SWARM_BUDGET": str(16 * 1024), "SWARM_OUT_DIR": str(work / "out")}, work)
        yield {"prep": prep, "env": env, "work": work, "train_py": train_py, "out": work / "out", "proc": proc}


def test_cpu_profile_trains_loss_falls_and_evaluates_itself(harness: dict) -> None:
    proc = harness["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    progress = parse_progress(proc.stdout)
    assert len(progress) >= 2 and progress[-1][1] == pytest.approx(1.0)
    assert progress[-1][2] < progress[0][2] - 0.5, progress
    block = parse_block(proc.stdout)
    assert set(block) >= BLOCK_KEYS and "val_bpb" in block
    assert block["profile"] == "cpu" and block["dataset_fingerprint"] == harness["prep"].dataset_fingerprint
    assert int(block["num_steps"]) == 16 and (block["budget"], block["budget_unit"]) == ("16384", "tokens")
    trusted = prepare.evaluate(harness["train_py"], harness["out"], harness["prep"].val_dir)
    assert trusted.status == "ok" and trusted.causal
    assert float(block["val_bpb"]) == pytest.approx(trusted.val_bpb, abs=1e-6)
    assert 1.0 < trusted.val_bpb < 12.0 and trusted.eval_tokens >= 4096
    config = json.loads((harness["out"] / "config.json").read_text())
    assert config["vocab_size"] == harness["prep"].vocab_size and "model_config" in config


def test_default_train_py_is_importable_without_side_effects(harness: dict) -> None:
    from harness.model_server import import_train

    module = import_train(TRAIN_PY)
    assert callable(module.build_model) and module.CPU_DEPTH >= 1
    config = {"model_config": module.model_config(64, 32), "vocab_size": 64}
    logits = module.build_model(config)(torch.zeros(2, 32, dtype=torch.long))
    assert logits.shape == (2, 32, 64)


def test_runner_mode_trains_without_val_and_prints_no_val_bpb(harness: dict, tmp_path: Path) -> None:
    env = {**harness["env"], "SWARM_MODE": "runner", "SWARM_DATA_DIR": str(harness["prep"].data_dir),
           "SWARM_BUDGET": "3072", "SWARM_OUT_DIR": str(tmp_path / "out")}
    proc = run_py(harness["train_py"], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    block = parse_block(proc.stdout)
    assert "val_bpb" not in block and block["num_steps"] == "3"
    assert (tmp_path / "out" / "model.pt").exists() and (tmp_path / "out" / "config.json").exists()
    # a hostile train.py looks for the validation split through prepare.py's API and the data dir
    hostile = tmp_path / "hostile.py"
    hostile.write_text(
        "import json, prepare\n"
        "d = prepare.get_data_dir()\n"
        "print(json.dumps({'val_dir': str(prepare.get_val_dir()),\n"
        "                  'files': [str(p.relative_to(d)) for p in d.rglob('*')]}))\n")
    found = json.loads(run_py(hostile, env, tmp_path).stdout)
    assert found["val_dir"] == "None"
    assert not any("val" in Path(f).parts for f in found["files"])
    # (hiding <fingerprint>/val on disk, e.g. a container mounting only the train view, is the runner's job)


def test_two_runs_with_one_seed_give_the_same_loss(harness: dict, tmp_path: Path) -> None:
    results = []
    for name in ("a", "b"):
        env = {**harness["env"], "SWARM_MODE": "runner", "SWARM_BUDGET": "4096", "SWARM_SEED": "7",
               "SWARM_OUT_DIR": str(tmp_path / name)}
        proc = run_py(harness["train_py"], env, tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results.append((parse_block(proc.stdout)["final_loss"], torch.load(tmp_path / name / "model.pt")))
    (loss_a, state_a), (loss_b, state_b) = results
    assert loss_a == loss_b and math.isfinite(float(loss_a))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_fake_loss_and_fake_val_bpb_still_get_the_honest_bpb(harness: dict, tmp_path: Path) -> None:
    cheat = make_variant(tmp_path / "cheat" / "train.py", replace=[
        ("    def forward(self, idx):\n", "    def forward(self, idx, targets=None):\n"
                                         "        if targets is not None:\n"
                                         "            return torch.tensor(0.001)  # a fake low loss\n"),
        ('    print("---")\n', '    print("---")\n    print("val_bpb: 0.000100")\n'),
    ])
    env = {**harness["env"], "SWARM_MODE": "runner", "SWARM_BUDGET": "2048", "SWARM_OUT_DIR": str(tmp_path / "o")}
    proc = run_py(cheat, env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parse_block(proc.stdout)["val_bpb"] == "0.000100"  # what it claims
    claimed = prepare.evaluate(cheat, tmp_path / "o", harness["prep"].val_dir)
    assert claimed.status == "ok" and claimed.val_bpb > 1.0  # what it is
    # the same weights score the same under the honest and the cheating definition
    honest = prepare.evaluate(harness["train_py"], harness["out"], harness["prep"].val_dir)
    cheat_on_honest = prepare.evaluate(cheat, harness["out"], harness["prep"].val_dir)
    assert cheat_on_honest.val_bpb == honest.val_bpb


def test_noncausal_model_is_caught(harness: dict, tmp_path: Path) -> None:
    peek = make_variant(tmp_path / "peek" / "train.py", replace=[("is_causal=True", "is_causal=False")])
    res = prepare.evaluate(peek, harness["out"], harness["prep"].val_dir)
    assert res.status == "noncausal" and not res.causal and res.val_bpb is None
    assert "sees the future" in res.reason


@pytest.mark.parametrize(("old", "new", "reason"), [
    ("        return logits\n", "        return logits * float('nan')\n", "NaN"),
    ("        return logits\n", "        return logits[:, :, :10]\n", "shape"),
    ("        return logits\n", "        return logits, None\n", "tuple"),
    ("def build_model(config):", "def make_model(config):", "build_model"),
])
def test_broken_models_are_errors(harness: dict, tmp_path: Path, old: str, new: str, reason: str) -> None:
    res = prepare.evaluate(make_variant(tmp_path / "t" / "train.py", replace=[(old, new)]),
                           harness["out"], harness["prep"].val_dir)
    assert res.status == "error" and res.val_bpb is None and reason in res.reason


def test_nan_loss_fails_fast_with_exit_3(harness: dict, tmp_path: Path) -> None:
    bad = make_variant(tmp_path / "nan" / "train.py", knobs={"SOFTCAP": 'float("nan")'})
    proc = run_py(bad, {**harness["env"], "SWARM_MODE": "runner", "SWARM_OUT_DIR": str(tmp_path / "o")}, tmp_path)
    assert proc.returncode == 3 and "FAIL: nan loss at step 0" in proc.stdout


def test_evaluate_cli(harness: dict, tmp_path: Path) -> None:
    peek = make_variant(tmp_path / "peek" / "train.py", replace=[("is_causal=True", "is_causal=False")])
    env = {**harness["env"], "SWARM_VAL_DIR": str(harness["prep"].val_dir)}
    out = tmp_path / "r.json"
    proc = run_py(prepare.__file__, env, tmp_path, "evaluate", "--train-py", str(peek),
                  "--model-dir", str(harness["out"]), "--json-out", str(out))
    assert proc.returncode == 0, proc.stderr  # non-causal is a verdict, not a failure
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res == json.loads(out.read_text()) and res["status"] == "noncausal"
    missing = run_py(prepare.__file__, env, tmp_path, "evaluate", "--train-py", str(peek),
                     "--model-dir", str(tmp_path / "nowhere"))
    assert missing.returncode != 0
