"""The house's floors, checked on every import statement of the tree (DESIGN.md, "Layering").

Ground floor: ``bus/`` (the wire, train.py's contract, the result fold) and ``harness/`` + ``prepare.py``
(the experiment harness). ``agents/``, ``runner/``, ``ledger/`` and ``dashboard/`` stand on them and never
import each other — they meet only through messages, so each can run on its own machine (the runner also
uses the harness, its trusted side). ``swarmcli/`` is the top floor: nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bus", "harness", "agents", "runner", "ledger", "dashboard", "swarmcli")
MODULES = {"prepare": "harness", "train": "train"}  # top-level modules and the floor they belong to

# package -> the packages it may import
ALLOWED: dict[str, set[str]] = {
    "bus": set(),
    "harness": set(),
    "train": {"harness"},
    "agents": {"bus"},
    "runner": {"bus", "harness"},
    "ledger": {"bus"},
    "dashboard": {"bus"},
    "swarmcli": {"bus", "harness", "agents", "runner", "ledger", "dashboard"},
}


def floor_of(module: str) -> str | None:
    top = module.split(".")[0]
    if top in PACKAGES:
        return top
    return MODULES.get(top)


def violations(path: Path, package: str) -> list[str]:
    """Imports in ``path`` (a file of ``package``) that reach a floor it may not stand on."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            floor = floor_of(name)
            if floor is not None and floor != package and floor not in ALLOWED[package]:
                where = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
                out.append(f"{where}:{node.lineno}: {package} imports {name}")
    return out


def tree_files() -> list[tuple[Path, str]]:
    files = [(p, pkg) for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    files += [(REPO / f"{m}.py", floor) for m, floor in MODULES.items()]
    return files


def test_no_floor_imports_one_it_does_not_stand_on() -> None:
    found = [v for path, pkg in tree_files() for v in violations(path, pkg)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("package", "line"), [
    ("agents", "from runner.daemon import Runner"),
    ("runner", "import ledger.queries"),
    ("ledger", "from agents.loop import run_agent"),
    ("bus", "from harness import feed"),
    ("dashboard", "from ledger.analysis import write_report"),
    ("runner", "from swarmcli.up import run_up"),
])
def test_the_check_catches_a_forbidden_import(tmp_path: Path, package: str, line: str) -> None:
    """What the check says when someone adds one of these lines to a module of ``package``."""
    path = tmp_path / "probe.py"
    path.write_text(line + "\n")
    got = violations(path, package)
    assert len(got) == 1 and f"{package} imports" in got[0], got
