"""Where a watch writes and publishes: its JSON report, its TensorBoard log and its live session.

Opened together when the watch starts (a path that holds someone else's file is refused
before anything is measured), fed each step's record as it is written, closed once however
the loop ends, or dropped without a trace when the watch fails to start.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from workbench.engine.records import BreakHit, Finding, ModuleNode, StepRecord
from workbench.session.watch.ranks import rank_dir, rank_path

if TYPE_CHECKING:
    from workbench.engine.instruments import Instruments
    from workbench.report.run_report import RunReport
    from workbench.report.tensorboard import TensorBoardWriter
    from workbench.session import protocol
    from workbench.session.live import Live

REPORT_START = b'{\n  "schema": "workbench.run/1"'


def check_report_path(path: Path) -> None:
    """Refuse a path that holds a file which is not a previous workbench report (or is unwritable)."""
    from workbench.errors import OutputPathError
    from workbench.files import check_writable, existing_kind

    if existing_kind(path) == "file" and path.stat().st_size > 0:
        with open(path, "rb") as f:
            start = f.read(len(REPORT_START))
        if start != REPORT_START:
            raise OutputPathError(
                f"{path} exists and is not a workbench report (it does not start with "
                f'{{"schema": "workbench.run/1"): workbench.watch never writes over another file. '
                "Choose another report= path, or move that file away.")
    check_writable(path)


def script_title() -> str:
    """The running script's path (the watch's title when none is given)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    return str(path) or "<python>"


class Outputs:
    """A watch's report, TensorBoard writer and live session; each None until opened."""

    def __init__(self) -> None:
        self.report: RunReport | None = None
        self.tb: TensorBoardWriter | None = None
        self.live: Live | None = None
        self.report_path: Path | None = None
        self.tensorboard_dir: Path | None = None
        self.run_dir: Path | None = None

    def open_files(self, report: str | os.PathLike[str] | None, tensorboard: str | os.PathLike[str] | None,
                   histogram_every: int, *, rank: int, world: int, title: str, device: str, every: int) -> None:
        """The report (``exp.rank1.json`` per rank) and TensorBoard log (``DIR/rank1`` per rank) asked for."""
        if report is not None:
            from workbench.report.run_report import RunReport

            self.report_path = rank_path(report, rank, world)
            check_report_path(self.report_path)
            self.report = RunReport(str(self.report_path), title, device, every=every)
        if tensorboard is not None:
            from workbench.files import check_writable
            from workbench.report.tensorboard import TensorBoardWriter

            tb_dir = rank_dir(tensorboard, rank, world)
            check_writable(tb_dir, directory=True)
            self.tensorboard_dir = tb_dir
            self.tb = TensorBoardWriter(tb_dir, histogram_every)

    def serve(self, serve: bool | str, run_dir: str | os.PathLike[str] | None, *, title: str, device: str,
              every: int, modules: Sequence[ModuleNode], breakpoints: Sequence[str],
              set_breakpoints: Callable[[Sequence[str]], None],
              sample: Callable[[protocol.RequestSample], protocol.Sample]) -> None:
        """Publish the session live at ``serve`` for ``workbench attach``, its files under ``run_dir``."""
        from workbench.session import protocol
        from workbench.session.live import HONOURED, Live

        hello = protocol.Hello(
            host="watch", pid=os.getpid(), title=title, device=device, every=every,
            modules=tuple(modules), breakpoints=tuple(breakpoints),
            started_at=time.time(), commands=HONOURED, workbench=_version(),
        )
        self.live = Live.open(serve, run_dir, hello, set_breakpoints=set_breakpoints, sample=sample)
        self.run_dir = Path(self.live.server.run_dir)

    @property
    def address(self) -> str | None:
        """Where a client attaches, when serving."""
        return None if self.live is None else (self.live.address or str(self.run_dir))

    def record(self, record: StepRecord, values: dict[str, float]) -> None:
        """One written step, with what ``wb.log`` gave for it."""
        if self.report is not None:
            self.report.add_findings(record.findings)
            self.report.add(record, extra={"logged": values} if values else None)
        if self.tb is not None:
            self.tb.step(record)
            if values:
                self.tb.scalars(record.step, {f"log/{k}": v for k, v in values.items()})
        if self.live is not None:
            self.live.step(record, values)

    def findings(self, findings: Sequence[Finding]) -> None:
        if self.live is not None:
            self.live.findings(findings)

    def close(self, stopped_by: str, error: dict[str, Any] | None, break_hit: BreakHit | None) -> None:
        """Write the report, close the log and end the session, each whatever the others did."""
        try:
            if self.report is not None:
                self.report.write(stopped_by, error, break_hit)
        finally:
            if self.tb is not None:
                with contextlib.suppress(Exception):
                    self.tb.close()
            if self.live is not None:
                self.live.close(stopped_by, (error or {}).get("message", ""))

    def abort(self) -> None:
        """The watch failed to start: nothing was measured, so no report is left behind."""
        stream = getattr(self.report, "stream", None)
        if stream is not None and stream.open:
            stream.abort()
        for closer in (getattr(self.tb, "close", None), getattr(getattr(self.live, "server", None), "close", None)):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer()


def sample_reply(request: protocol.RequestSample, inst: Instruments, model: nn.Module,
                 kept: dict[str, torch.Tensor | None], step: int) -> protocol.Sample:
    """A client asked for a module's output sample or its gradients: the answer, or why there is none.

    ``kept``: the last measured step's output samples, for a request between steps.
    """
    from workbench.session import protocol
    from workbench.session.live import sample_message

    values: torch.Tensor | None
    if request.kind == "activation":
        values = inst.activation_sample(request.module)
        kept_sample = kept.get(request.module)
        if values is None and kept_sample is not None:
            values = kept_sample.detach().to("cpu", copy=True)
        missing = "no measured output of that module is kept (it ran on no measured step yet)"
    else:
        module = dict(model.named_modules()).get(request.module)
        grads = [p.grad.detach().reshape(-1) for p in (module.parameters(recurse=False) if module else ())
                 if p.grad is not None]
        values = torch.cat(grads).to("cpu") if grads else None  # deliberate sync: a client asked
        missing = "that module's parameters hold no gradient now (between steps they are cleared)"
    if values is None:
        return protocol.Sample(id=request.id, module=request.module, kind=request.kind, step=step,
                               error=missing)
    return sample_message(request, values.float(), step)


def _version() -> str:
    """This package's version, for Hello (without importing the package root from below it)."""
    from importlib import metadata

    try:
        return metadata.version("torch-workbench")
    except metadata.PackageNotFoundError:
        return ""
