"""What publishing a session costs the training thread: SessionServer.publish of real step records.

    python -m pytest benchmarks/test_session_publish.py --benchmark-group-by=group

One group per record size: a measured step of cnn_image (every module and parameter
summarised) and an unmeasured one (``every`` > 1: loss, norms, timing only). Rows: no
client (encode + the session.jsonl line), one reading client, and one reading client
beside one that never reads (its backlog fills, it is dropped; publish must not slow).
The record is built once by a real Engine run; the timed call is ``publish`` alone.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.session import protocol as P
from workbench.session.transport import SessionServer, connect

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@pytest.fixture(scope="module")
def records() -> dict[str, P.StepRecord]:
    from workbench.engine import Engine, EngineConfig
    from workbench.scenario import load

    with Engine(load(SCENARIOS / "cnn_image.py"), EngineConfig(stats_every=1)) as eng:
        measured = eng.step_once()
    bare = dataclasses.replace(measured, modules=(), params=(), measured=False)
    return {"measured": measured, "unmeasured": bare}


class _Reader:
    """A client that reads everything on a thread of its own, as a TUI would."""

    def __init__(self, server: SessionServer) -> None:
        self.conn = connect(server.run_dir)
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-reader")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.count += len(self.conn.poll(timeout=0.05))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


@pytest.fixture(params=["no client", "one reader", "reader + stuck client"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionServer]:
    srv = SessionServer(tmp_path / "run", max_backlog=4 << 20)
    srv.publish(P.Hello(host="engine", pid=0, title="cnn_image", device="cpu", every=1, modules=(),
                        breakpoints=(), started_at=0.0))
    readers: list[_Reader] = []
    stuck: socket.socket | None = None
    if request.param != "no client":
        readers.append(_Reader(srv))
    if request.param == "reader + stuck client":
        host, port = srv.address.rsplit(":", 1)
        stuck = socket.create_connection((host, int(port)))
        stuck.sendall((P.encode(P.Attach(token=srv.token)) + "\n").encode())
    srv.bench_case = request.param  # type: ignore[attr-defined]
    yield srv
    for r in readers:
        r.close()
    if stuck is not None:
        stuck.close()
    srv.close(drain=0.2)


@pytest.mark.parametrize("size", ["measured", "unmeasured"])
def test_publish_step(benchmark, records: dict[str, P.StepRecord], server: SessionServer, size: str) -> None:
    benchmark.group = f"publish a {size} step"
    benchmark.name = server.bench_case  # type: ignore[attr-defined]
    msg = P.Step(records[size])
    benchmark.extra_info["line_bytes"] = len(P.encode(msg))
    benchmark.pedantic(server.publish, args=(msg,), rounds=200, warmup_rounds=5)
