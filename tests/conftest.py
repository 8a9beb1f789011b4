"""Shared fixtures: where ../shared/data lives, and skips with a reason where it does not."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a skip naming what is missing."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data {p} is absent (tests read it from ../shared/data beside the checkout)")
    return p


@pytest.fixture
def shared_data() -> Path:
    return shared_path()


def pytest_collection_modifyitems(config, items):
    """An unregistered marker is an error: a misspelt or unregistered mark silently does nothing."""
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for item in items:
        for mark in item.iter_markers():
            if mark.name not in known:
                raise pytest.UsageError(f"{item.nodeid}: marker {mark.name!r} is not registered; add it to "
                                        "[tool.pytest.ini_options] markers in pyproject.toml")
