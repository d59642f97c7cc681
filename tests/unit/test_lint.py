"""Static checks that catch what a passing test can miss: undefined names, unused imports, likely bugs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def test_ruff_finds_no_errors():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it is in the test extras)")
    result = subprocess.run([ruff, "check", "--select", "F,E9,B", "--line-length", "120", "--output-format",
                             "concise", "operator", "tests", "bench"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout
