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


_slow = pytest.mark.slow  # each starts a process that imports torch and builds a scenario
HEADLESS = [
    ["--help"],
    pytest.param(["list"], marks=_slow),
    ["bench", "--list-variants"],
    ["profile", "--help"],
    pytest.param(["summary", "scenarios/mlp_digits.py"], marks=_slow),
    pytest.param(["run", "scenarios/mlp_digits.py", "--steps", "2"], marks=_slow),
    pytest.param(["check", "scenarios/mlp_digits.py", "--steps", "2"], marks=_slow),
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


@pytest.mark.slow
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


HELP = [["--help"], *([c, "--help"] for c in ("tui", "attach", "list", "run", "check", "summary", "bench", "profile", "diff"))]


@pytest.mark.parametrize("argv", HELP, ids=lambda a: " ".join(a))
def test_help_does_not_load_torch(argv: list[str]) -> None:
    """`--help` answers at once: torch (1-2 s to import) stays unloaded. Timed in benchmarks/."""
    code = (
        "import sys\n"
        "from workbench.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'textual') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_tui_draws_its_first_frame_before_torch_loads() -> None:
    """The app, its screens and the picker import no torch: the first frame does not wait ~2 s.

    With a scenario given, torch is imported by the loading worker, never on the UI thread.
    """
    code = (
        "import sys, asyncio, threading\n"
        "import workbench, workbench.engine, workbench.scenario\n"
        "print('LIGHT', 'torch' in sys.modules)\n"
        "importers = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            importers.append(threading.current_thread() is threading.main_thread())\n"
        "        return None\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from workbench.tui.app import create_app\n"
        "from workbench.tui.screens.picker import PickerScreen\n"
        "app = create_app([], device='cpu')\n"
        "async def picker():\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        await pilot.pause()\n"
        "        print('PICKER', isinstance(app.screen, PickerScreen), 'torch' in sys.modules)\n"
        "asyncio.run(picker())\n"
        "app = create_app([sys.argv[1]], device='cpu')\n"
        "async def loaded():\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        seen = False\n"
        "        for _ in range(3000):\n"
        "            await pilot.pause(0.01)\n"
        "            seen = seen or app.main.busy == 'loading'\n"
        "            if app.main.view is not None:\n"
        "                break\n"
        "        print('LOADED', seen, app.main.view is not None)\n"
        "asyncio.run(loaded())\n"
        "print('TORCH IMPORTED ON THE UI THREAD', importers[:1] == [True])\n"
        "print('ENGINE', workbench.Engine.__name__)\n"
    )
    mlp = str(ROOT / "scenarios" / "mlp_digits.py")
    result = subprocess.run([sys.executable, "-c", code, mlp], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "LIGHT False" in out, out  # `import workbench` and its engine and scenario packages stay light
    assert "PICKER True False" in out, out
    assert "LOADED True True" in out, out  # the loading state was drawn, then the scenario
    assert "TORCH IMPORTED ON THE UI THREAD False" in out, out
    assert "ENGINE Engine" in out, out  # `from workbench import Engine` works
