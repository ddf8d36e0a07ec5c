from __future__ import annotations

import subprocess
import sys

import pytest

from workbench.cli import main
from tests.conftest import ROOT


@pytest.mark.slow
def test_list_bundled(capsys) -> None:
    assert main(["list", str(ROOT / "scenarios")]) == 0
    out = capsys.readouterr().out
    for label in ("mlp_digits", "cnn_image", "ImageClassifier", "lstm_text", "collab_filter", "resnet_tiny"):
        assert label in out


@pytest.mark.slow
def test_list_reports_a_broken_file_and_exits_2(tmp_path, capsys) -> None:
    (tmp_path / "ok.py").write_text((ROOT / "scenarios" / "mlp_digits.py").read_text())
    (tmp_path / "bad.py").write_text("def build(device):\n    return 42\n")
    assert main(["list", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "failed to load" in captured.out and "returned int" in captured.out
    assert "MLP" in captured.out


def test_list_missing_directory_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["list", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "Traceback" not in err


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "workbench", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "torch-workbench" in result.stdout


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_list_timeout_counts_the_build_only_not_the_torch_import(tmp_path) -> None:
    """`--timeout 1` on three init templates: each builds in well under a second, but a fresh
    (forked) build child imports torch first, and again after every restart. Counted against
    the first build, the import failed all three; the child now imports before the clock starts."""
    for name in ("a.py", "b.py", "c.py"):
        assert main(["init", str(tmp_path / name)]) == 0
    # A fresh interpreter: torch not imported, so the build child is a fork (this test process
    # has torch loaded and would spawn one).
    result = subprocess.run([sys.executable, "-m", "workbench", "list", str(tmp_path), "--timeout", "1"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "did not return" not in result.stdout
    assert result.stdout.count("Sequential") == 3, result.stdout
