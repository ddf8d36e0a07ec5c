"""Layering: the domain layers never import Textual, headless commands never load it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contract() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("lint-imports is missing: install the test extras (pip install -e '.[test]')")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KEPT" in result.stdout


HEADLESS = [
    ["--help"],
    ["list"],
    ["bench", "--list-variants"],
    ["profile", "--help"],
    ["summary", "scenarios/mlp_digits.py"],
    ["run", "scenarios/mlp_digits.py", "--steps", "2"],
    ["check", "scenarios/mlp_digits.py", "--steps", "2"],
]


@pytest.mark.parametrize("argv", HEADLESS, ids=lambda a: " ".join(a))
def test_headless_command_does_not_load_textual(argv: list[str]) -> None:
    code = (
        "import sys, runpy\n"
        "from workbench.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code or 0\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.') or m.startswith('workbench.tui'))\n"
        "print('LOADED', bad)\n"
        "sys.exit(0 if not bad else 3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "LOADED []" in result.stdout


def test_domain_modules_do_not_load_textual() -> None:
    code = (
        "import sys, importlib, pkgutil, workbench\n"
        "for pkg in ('engine', 'bench', 'profiling', 'report'):\n"
        "    mod = importlib.import_module('workbench.' + pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "import workbench.scenario, workbench.cli\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'textual' or m.startswith('workbench.tui')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
