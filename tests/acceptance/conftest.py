"""Fixtures of the acceptance group: one clone of the working tree per session (tests/acceptance/newcomer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.newcomer import Newcomer, clone_working_tree


@pytest.fixture(scope="session")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_working_tree(tmp_path_factory.mktemp("newcomer") / "research-swarm")


@pytest.fixture
def newcomer(clone: Path, tmp_path: Path) -> Newcomer:
    home = tmp_path / "home"
    home.mkdir()
    return Newcomer(clone, home)
