"""The TensorBoard command for a trace directory, and starting it as a child process."""

from __future__ import annotations

import importlib.util
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UsageError

HOST = "127.0.0.1"  # never bind beyond this machine


def tensorboard_command(logdir: str | Path) -> str:
    return f"tensorboard --logdir {shlex.quote(str(logdir))}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class TensorBoard:
    """A running TensorBoard child; ``stop()`` ends it (also on exceptions)."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def start_tensorboard(logdir: str | Path, port: int | None = None, timeout: float = 120.0) -> TensorBoard:
    """Start ``tensorboard --logdir LOGDIR`` on 127.0.0.1 and wait until it answers.

    Its output goes to LOGDIR/tensorboard.log. Raises UsageError when
    tensorboard is not installed or does not come up within ``timeout``.
    """
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError(
            "tensorboard is not installed in this environment; install the extra with "
            "pip install -e '.[tb]' (tensorboard + torch-tb-profiler), or view the trace in "
            "https://ui.perfetto.dev instead."
        )
    port = port or free_port()
    logdir = Path(logdir)
    log_path = logdir / "tensorboard.log"
    log = log_path.open("ab")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", HOST, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()  # the child holds its own copy
    tb = TensorBoard(process, f"http://{HOST}:{port}/#pytorch_profiler", log_path)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise UsageError(
                    f"tensorboard exited with code {process.returncode} before serving; see {log_path}."
                )
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/data/plugins_listing", timeout=2):
                    return tb
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        raise UsageError(f"tensorboard did not answer on port {port} within {timeout:.0f} s; see {log_path}.")
    except BaseException:
        tb.stop()
        raise
