"""Pure pieces of the runner: the module-level rule, knobs, output parsing, hardware classes (the simulated
landscape has its own file, tests/test_landscape.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.contract import check_module_level, parse_knobs, parse_progress, parse_summary
from runner.errors import ContractViolation

REPO = Path(__file__).resolve().parents[1]

OK_SOURCES = [
    (Path(__file__).resolve().parents[1] / "train.py").read_text(),
    "import torch\nLR = 3e-4  # c\nTOTAL = 2 ** 19\nDT = torch.bfloat16\n@torch.no_grad()\ndef build_model(config):\n    return 1\n",
    'from dataclasses import dataclass\n@dataclass(frozen=True)\nclass C:\n    n: int = 3\ndef build_model(c): ...\nif __name__ == "__main__":\n    main()\n',
    "try:\n    import flash_attn\nexcept ImportError:\n    flash_attn = None\ndef build_model(c): ...\n",
]

BAD_SOURCES = {
    "call": "import torch\ntorch.manual_seed(0)\ndef build_model(c): ...\n",
    "assign-call": "import os\nX = os.system('id')\ndef build_model(c): ...\n",
    "loop": "for i in range(3):\n    pass\ndef build_model(c): ...\n",
    "with": "with open('x') as f:\n    pass\ndef build_model(c): ...\n",
    "if": "import os\nif os.environ.get('X'):\n    Y = 1\ndef build_model(c): ...\n",
    "default-call": "def build_model(c, x=print('hi')): ...\n",
    "comprehension": "A = [i for i in range(10)]\ndef build_model(c): ...\n",
    "no-build-model": "X = 1\n",
    "syntax": "def (:\n",
    "try-work": "try:\n    X = open('f')\nexcept Exception:\n    pass\ndef build_model(c): ...\n",
}


@pytest.mark.parametrize("source", OK_SOURCES)
def test_module_level_rule_accepts_definitions(source: str) -> None:
    check_module_level(source)


@pytest.mark.parametrize("name", sorted(BAD_SOURCES))
def test_module_level_rule_rejects_side_effects(name: str) -> None:
    with pytest.raises(ContractViolation):
        check_module_level(BAD_SOURCES[name])


def test_real_train_py_passes_the_rule() -> None:
    path = REPO / "train.py"
    if not path.exists():
        pytest.skip("the harness's train.py is not there yet")
    check_module_level(path.read_text())


def test_knobs_and_output_parsing() -> None:
    knobs = parse_knobs(
        "LR = 3e-4  # c\nTOTAL = 2**11\nNAME = 'L'\nPAIR = (0.8, 0.95)\nlower = 1\nX = f(1)\n"
    )
    assert knobs == {"LR": 3e-4, "TOTAL": 2048, "NAME": "L", "PAIR": (0.8, 0.95)}
    p = parse_progress("step 12 | progress 0.250 | loss 3.1416 | tok/s 3400")
    assert p is not None and (p.step, p.progress, p.loss, p.tok_per_s) == (12, 0.25, 3.1416, 3400)
    s = parse_summary("step 1\n---\nval_bpb: 0.5\n---\nval_bpb: 1.25\nnum_steps: 7\njunk\n")
    assert s.values == {"val_bpb": 1.25, "num_steps": 7.0}
    assert parse_summary("FAIL: nan loss at step 9\n").nan_step == 9
