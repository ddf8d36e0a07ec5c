"""`workbench init` templates pass `workbench check --strict` as written (the README says so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--model", "BertForMaskedLM"]], ids=["gpt2", "bert"])
def test_hf_template_passes_strict_check(tmp_path: Path, extra: list[str], capsys) -> None:  # noqa: ANN001
    pytest.importorskip("transformers")
    path = tmp_path / "hf_scenario.py"
    assert main(["init", "--hf", *extra, str(path)]) == 0
    # --strict: a warning (grad_clipping from a max_norm every step exceeds) fails it too.
    assert main(["check", "--strict", str(path)]) == 0, capsys.readouterr().out
