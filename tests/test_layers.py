"""The package's layering, declared once in pyproject.toml ([tool.importlinter]): no module
imports from a layer above its own, and the modules of a package import each other without
cycles. Checked on the source tree, and shown to fail on a copy with one bad import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def lint(src: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts over the package under `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-c", LINT, "--no-cache", str(ROOT / "pyproject.toml")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src, timeout=120)


def test_the_source_tree_keeps_its_layers():
    r = lint(ROOT / "src")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(
    "module, line, named",
    [
        # an upward import: a teacher reaching into the training engine
        (
            "teachers/base.py",
            "from dreamteacher.engine import loop",
            "dreamteacher.teachers.base -> dreamteacher.engine.loop",
        ),
        # a lazy one, inside a function, counts as well
        (
            "losses.py",
            "def _f():\n    from dreamteacher.student import Backbone",
            "dreamteacher.losses -> dreamteacher.student",
        ),
        # a cycle between two modules of one package
        (
            "data/folder.py",
            "from dreamteacher.data.segmentation import MaskFolder",
            "No cycles are allowed in dreamteacher.data.",
        ),
    ],
)
def test_a_bad_import_breaks_the_contract_and_is_named(tmp_path, module, line, named):
    shutil.copytree(ROOT / "src" / "dreamteacher", tmp_path / "dreamteacher")
    path = tmp_path / "dreamteacher" / module
    path.write_text(path.read_text() + f"\n\n{line}  # noqa\n")
    r = lint(tmp_path)
    assert r.returncode != 0
    assert "BROKEN" in r.stdout and named in r.stdout, r.stdout
