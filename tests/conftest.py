"""Fixtures shared by every layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import render


@pytest.fixture
def render_into(tmp_path: Path):
    def _render(body: dict[str, Any], out: Path | None = None, *extra: str) -> Path:
        target = out or tmp_path / "out"
        assert render(tmp_path, target, body, *extra) == 0
        return target
    return _render
