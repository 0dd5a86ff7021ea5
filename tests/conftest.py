"""Shared fixtures: a freshly built demo KO on a temporary shelf."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

from demo_ko import write_demo_ko

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_ko(tmp_path_factory.mktemp("template"))


@pytest.fixture
def demo_shelf(tmp_path: Path, demo_template: Path) -> Path:
    """A shelf holding one writable copy of the demo KO (tests may tamper with it)."""
    shelf = tmp_path / "shelf"
    shutil.copytree(demo_template, shelf / "demo-bmi" / "1.0.0")
    return shelf


@pytest.fixture
def demo_path(demo_shelf: Path) -> Path:
    return demo_shelf / "demo-bmi" / "1.0.0"
