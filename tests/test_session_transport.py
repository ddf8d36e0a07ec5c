"""The session transport: tokens, several clients, replay, a stuck client, the log after a crash,
and the session files (never written over a user's file)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from workbench.engine.records import Finding, MemorySample, Phase, StepRecord
from workbench.session import protocol as P
from workbench.session.log import read_log
from workbench.session.registry import list_sessions, read_session
from workbench.session.transport import (
    ClientConnection,
    ReplayConnection,
    SessionError,
    SessionReadOnly,
    SessionRefused,
    SessionServer,
    connect,
)

ROOT = Path(__file__).resolve().parent.parent


def hello(title: str = "train.py") -> P.Hello:
    return P.Hello(host="watch", pid=os.getpid(), title=title, device="cpu", every=1, modules=(),
                   breakpoints=("nan_inf",), started_at=time.time(), commands=("pause", "continue"))


def step(n: int, loss: float = 1.0) -> P.Step:
    return P.Step(StepRecord(step=n, loss=loss, total_grad_norm=None, lrs=(0.1,),
                             phase_seconds={Phase.FORWARD: 0.01}, memory=MemorySample(rss_bytes=1),
                             modules=(), params=(), findings=()))


def finding(n: int) -> P.Findings:
    return P.Findings((Finding(step=n, phase=Phase.LOSS, module="", parameter=None, kind="loss_divergence",
                               severity="error", value=float("nan"), threshold=None, message="loss is NaN"),))


def poll_until(conn: ClientConnection | ReplayConnection, count: int, seconds: float = 5.0) -> list[object]:
    got: list[object] = []
    deadline = time.monotonic() + seconds
    while len(got) < count and time.monotonic() < deadline:
        got += conn.poll(timeout=0.1)
    return got


@pytest.fixture
def server(tmp_path: Path):
    srv = SessionServer(tmp_path / "run", title="train.py")
    yield srv
    srv.close(drain=0.2)


def test_answers_to_one_clients_request_stay_out_of_the_log(tmp_path: Path) -> None:
    # An inspector asks for a module's sample at every update: logged, they grew the log
    # without end while a script was held, and no reader of the log uses them.
    srv = SessionServer(tmp_path / "run", title="train.py")
    srv.publish(hello())
    for i in range(3):
        srv.publish(P.Sample(id=i, module="fc", kind="activation", step=0))
    srv.publish(step(0))
    srv.close(P.Ended(reason="finished", exit_code=0))
    kinds = [P.type_name(m) for m in read_log(tmp_path / "run" / "session.jsonl").messages]
    assert kinds == ["hello", "step", "ended"]


def test_session_files_while_live_and_after_close(tmp_path: Path) -> None:
    srv = SessionServer(tmp_path / "run", host="engine", title="scenarios/mlp_digits.py")
    info = read_session(tmp_path / "run")
    assert info.pid == os.getpid() and info.host == "engine" and info.live and not info.ended
    host, port = info.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0 and info.address == srv.address
    token_file = tmp_path / "run" / "session.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == srv.token and len(srv.token) >= 32
    threads = [t for t in threading.enumerate() if t.name.startswith("workbench-session")]
    assert threads and all(t.daemon for t in threads)
    srv.publish(hello())
    srv.publish(step(0))
    srv.close(P.Ended(reason="finished", exit_code=0))
    assert not any(t.is_alive() for t in threads)
    info = read_session(tmp_path / "run")
    assert info.ended and info.end_reason == "finished" and not info.live
    assert not token_file.exists()
    kinds = [P.type_name(m) for m in read_log(tmp_path / "run" / "session.jsonl").messages]
    assert kinds == ["hello", "step", "ended"]
    srv.close()  # twice is harmless
    assert srv.publish(step(1)) == -1  # after close: dropped, no error in the training loop


def test_wrong_token_is_refused_with_one_line_and_closed(server: SessionServer) -> None:
    server.publish(hello())
    with pytest.raises(SessionRefused, match="wrong or missing session token"):
        connect(server.address, token="not-the-token", timeout=2)
    # A raw client sees exactly one error line, then the end of the stream, and no session data.
    host, port = server.address.rsplit(":", 1)
    for first in (P.encode(P.Attach(token="guess")), "GET / HTTP/1.1", P.encode(P.Pause())):
        with socket.create_connection((host, int(port)), timeout=3) as s:
            s.sendall((first + "\n").encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        assert len(lines) == 1, lines
        msg = P.decode(lines[0])
        assert isinstance(msg, P.Refused) and "session.token" in msg.reason
    assert sum("refused client" in n for n in server.notes) >= 4
    # The right token still works after the refusals.
    with connect(server.address, token=server.token) as good:
        assert isinstance(poll_until(good, 1)[0], P.Hello)


def test_two_clients_both_get_messages_and_send_commands(server: SessionServer) -> None:
    server.publish(hello())
    a = connect(server.run_dir)  # the run directory: address and token from its files
    b = connect(server.address, token=server.token)
    assert isinstance(a, ClientConnection) and isinstance(b, ClientConnection)
    for n in range(5):
        server.publish(step(n))
    for conn in (a, b):
        got = poll_until(conn, 6)
        assert [P.type_name(m) for m in got] == ["hello"] + ["step"] * 5
        assert [m.record.step for m in got[1:]] == list(range(5))
        assert conn.hello is not None and conn.hello.title == "train.py"
    assert server.clients == 2
    assert server.commands() == []  # nothing sent yet, and it does not wait
    a.send(P.Pause())
    b.send(P.SetBreakpoints(("loss>5",)))
    first = server.wait_command(timeout=3)
    second = server.wait_command(timeout=3)
    assert {type(first), type(second)} == {P.Pause, P.SetBreakpoints}
    assert server.wait_command(timeout=0.05) is None
    a.send(P.Rewind(2))
    deadline = time.monotonic() + 3
    cmds: list[object] = []
    while not cmds and time.monotonic() < deadline:
        cmds = server.commands()
        time.sleep(0.01)
    assert cmds == [P.Rewind(2)]
    a.close()
    b.close()


def test_late_client_gets_hello_then_everything_so_far(tmp_path: Path) -> None:
    srv = SessionServer(tmp_path / "run", replay_steps=3)
    try:
        srv.publish(hello("first"))
        for n in range(10):
            srv.publish(step(n))
            if n in (2, 7):
                srv.publish(finding(n))
            srv.publish(P.Progress(step=n + 1, next_phase=Phase.FORWARD, paused=False, busy=True))
        srv.publish(hello("second"))  # a later Hello replaces the first in the replay
        with connect(srv.run_dir) as late:
            got = poll_until(late, 7)
            # In the order published: step 7's findings follow step 7.
            assert [P.type_name(m) for m in got] == ["hello", "findings", "step", "findings", "step", "step",
                                                     "progress"], got
            assert got[0].title == "second"
            assert [m.record.step for m in got if isinstance(m, P.Step)] == [7, 8, 9]
            assert [m.findings[0].step for m in got if isinstance(m, P.Findings)] == [2, 7]
            srv.publish(step(10))  # then live
            assert [m.record.step for m in poll_until(late, 1)] == [10]
    finally:
        srv.close(drain=0.2)
    # The log keeps everything, whatever the replay bound.
    assert sum(isinstance(m, P.Step) for m in read_log(tmp_path / "run" / "session.jsonl").messages) == 11


def test_replay_follows_a_rewind_and_a_replaced_findings_list(server: SessionServer) -> None:
    server.publish(hello())
    for n in range(6):
        server.publish(step(n))
        server.publish(P.Log(step=n, values={"lr": 0.1}))
    server.publish(finding(2))
    server.publish(finding(4))
    # Rewound to the start of step 3: steps 3.. and their logs are undone; one finding list remains.
    server.publish(P.Progress(step=3, next_phase=Phase.FORWARD, paused=True, busy=False, history_from=3))
    server.publish(P.Findings(finding(2).findings, replace=True))
    server.publish(step(3, loss=0.5))
    with connect(server.run_dir) as late:
        got = poll_until(late, 10)
    assert [(P.type_name(m), getattr(getattr(m, "record", m), "step", None)) for m in got] == [
        ("hello", None), ("step", 0), ("log", 0), ("step", 1), ("log", 1), ("step", 2), ("log", 2),
        ("progress", 3), ("findings", None), ("step", 3)]
    assert got[-1].record.loss == 0.5 and got[-2].replace


def test_a_client_that_never_reads_does_not_block_publish(tmp_path: Path) -> None:
    srv = SessionServer(tmp_path / "run", max_backlog=1 << 20)
    try:
        srv.publish(hello())
        host, port = srv.address.rsplit(":", 1)
        stuck = socket.create_connection((host, int(port)))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall((P.encode(P.Attach(token=srv.token)) + "\n").encode())
        reader = connect(srv.run_dir)
        got = [0]  # Log messages the reading client received
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                got[0] += sum(isinstance(m, P.Log) for m in reader.poll(timeout=0.05))

        t = threading.Thread(target=read, daemon=True)
        t.start()

        def logs() -> int:
            return got[0]

        big = "x" * 8000
        longest = 0.0
        for n in range(2000):  # 16 MB in all: far more than the socket buffers and the backlog hold
            start = time.monotonic()
            srv.publish(P.Log(step=n, values={big: 1.0}))
            longest = max(longest, time.monotonic() - start)
            if n % 32 == 31:  # pace like training does, so the reading client keeps up (the stuck one cannot)
                deadline = time.monotonic() + 10
                while logs() < n + 1 - 32:  # at most 64 lines (512 KB) behind: within its backlog
                    if time.monotonic() > deadline:
                        pytest.fail(f"the reading client stopped at {logs()} of {n + 1}: {srv.notes}")
                    time.sleep(0.002)
        assert longest < 3, f"one publish took {longest:.1f} s"  # a generous guard, not a timing claim
        deadline = time.monotonic() + 10
        while logs() < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join()
        assert logs() == 2000  # the reading client lost nothing
        assert any("fell behind" in n for n in srv.notes), srv.notes
        assert srv.clients == 1
        stuck.close()
        reader.close()
    finally:
        srv.close(drain=0.2)


def test_unix_socket_session(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    srv = SessionServer(tmp_path / "run", bind=f"unix:{path}", host="engine")
    try:
        assert read_session(tmp_path / "run").address == f"unix:{path}"
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        srv.publish(hello())
        with connect(f"unix:{path}", token=srv.token) as conn:
            assert isinstance(poll_until(conn, 1)[0], P.Hello)
            conn.send(P.StepPhase())
            assert srv.wait_command(timeout=3) == P.StepPhase()
        with pytest.raises(SessionError, match="already exists"):
            SessionServer(tmp_path / "other", bind=f"unix:{path}")
    finally:
        srv.close(drain=0.2)
    assert not path.exists()


def test_finished_session_opens_read_only(server: SessionServer) -> None:
    server.publish(hello())
    server.publish(step(0))
    with connect(server.run_dir) as live:
        poll_until(live, 2)
        server.close(P.Ended(reason="finished"))
        got = poll_until(live, 1)
        assert isinstance(got[-1], P.Ended) and got[-1].reason == "finished"
    done = connect(server.run_dir)
    assert isinstance(done, ReplayConnection) and done.read_only
    assert [P.type_name(m) for m in done.poll()] == ["hello", "step", "ended"]
    assert done.poll() == []
    with pytest.raises(SessionReadOnly, match="read-only"):
        done.send(P.Continue())


@pytest.mark.parametrize("bind", ["tcp", "unix"])
def test_a_command_sent_as_the_host_ends_does_not_lose_its_ended(tmp_path: Path, bind: str) -> None:
    # The TUI asks for a sample while a script finishes: the send fails on the closed socket,
    # and the Ended the host wrote before closing must still be read ("finished", not
    # "disconnected").
    srv = SessionServer(tmp_path / "run", title="train.py",
                        **({"bind": f"unix:{tmp_path / 's.sock'}"} if bind == "unix" else {}))
    srv.publish(hello())
    conn = connect(srv.run_dir)
    assert isinstance(conn, ClientConnection)
    assert isinstance(poll_until(conn, 1)[0], P.Hello)
    srv.close(P.Ended(reason="finished", exit_code=0))
    failures = []
    deadline = time.monotonic() + 5
    while not failures and time.monotonic() < deadline:
        try:
            conn.send(P.Pause())
        except SessionError as exc:
            failures.append(str(exc))
        time.sleep(0.02)
    assert failures and "did not reach it" in failures[0]
    with pytest.raises(SessionError, match="did not reach it"):  # later sends say the same
        conn.send(P.Continue())
    got = poll_until(conn, 1)
    assert [(P.type_name(m), m.reason) for m in got] == [("ended", "finished")]
    assert conn.closed and conn.poll() == []


CRASHING_HOST = """
import os, sys
from workbench.session import protocol as P
from workbench.session.transport import SessionServer
srv = SessionServer(sys.argv[1], title="crash.py")
srv.publish(P.Hello(host="watch", pid=os.getpid(), title="crash.py", device="cpu", every=1, modules=(),
                    breakpoints=(), started_at=0.0))
srv.publish(P.Log(step=0, values={"loss": 1.5}))
print("ready", flush=True)
sys.stdin.readline()
with open(os.path.join(sys.argv[1], "session.jsonl"), "a") as fh:  # killed in the middle of a line
    fh.write('{"v":1,"type":"log","seq":2,"step":1,"val')
    fh.flush()
os._exit(9)
"""


def test_crashed_host_dead_pid_opens_read_only_and_skips_the_torn_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CRASHING_HOST, str(run)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert [s.pid for s in list_sessions(tmp_path)] == [child.pid]
        live = connect(run)
        assert isinstance(live, ClientConnection)
        assert [P.type_name(m) for m in poll_until(live, 2)] == ["hello", "log"]
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 9
        gone = poll_until(live, 1)
        assert isinstance(gone[-1], P.Ended) and gone[-1].reason == "disconnected"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert list_sessions(tmp_path) == []  # the pid is gone
    assert [s.title for s in list_sessions(tmp_path, include_ended=True)] == ["crash.py"]
    after = connect(run)
    assert isinstance(after, ReplayConnection)
    msgs = after.poll()
    assert [P.type_name(m) for m in msgs] == ["hello", "log", "ended"]
    assert msgs[-1].reason == "crashed" and "without closing" in msgs[-1].message
    assert any("line 3" in n and "incomplete" in n for n in after.notes), after.notes


def test_log_reader_bad_middle_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    log = tmp_path / "session.jsonl"
    log.write_text(P.encode(hello()) + "\n" + '{"v":1,"type":"step","seq":1}\n' + P.encode(step(1)) + "\n")
    with pytest.raises(P.ProtocolError, match=r"session\.jsonl line 2: bad 'step' message: record: missing"):
        read_log(log)
    log.write_text(P.encode(hello()) + "\n" + P.encode(step(1)))  # whole last line, only its newline missing
    assert len(read_log(log).messages) == 2 and read_log(log).notes == ()


@pytest.mark.parametrize("name, content", [
    ("session.json", '{"my": "settings"}'),
    ("session.jsonl", '{"event": "user data"}\n'),
    ("session.token", "my password is hunter2\n"),
])
def test_never_writes_over_a_users_file(tmp_path: Path, name: str, content: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text(content)
    with pytest.raises(SessionError, match=rf"{name} exists and was not written by a workbench session"):
        SessionServer(run)
    assert (run / name).read_text() == content
    assert sorted(p.name for p in run.iterdir()) == [name]


def test_a_finished_sessions_directory_is_reused_and_bad_binds_say_why(tmp_path: Path) -> None:
    SessionServer(tmp_path / "run").close(drain=0.1)
    again = SessionServer(tmp_path / "run")  # the old session's own files are replaced
    again.close(drain=0.1)
    with pytest.raises(SessionError, match="listens on this machine only.*ssh -L"):
        SessionServer(tmp_path / "x", bind="0.0.0.0:0")
    with pytest.raises(SessionError, match="not an address"):
        SessionServer(tmp_path / "x", bind="nowhere")
    with pytest.raises(SessionError, match="needs the session token"):
        connect("127.0.0.1:9")
    with pytest.raises(SessionError, match="holds no session.json"):
        connect(tmp_path)
    with pytest.raises(SessionError, match="no such run directory"):
        connect(tmp_path / "runs" / "gone")


def test_a_failing_io_thread_never_stops_the_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: SessionServer, sel: object) -> None:
        raise RuntimeError("bug in the accept path")

    monkeypatch.setattr(SessionServer, "_accept", broken)
    srv = SessionServer(tmp_path / "run")
    srv.publish(hello())
    host, port = srv.address.rsplit(":", 1)
    with contextlib.suppress(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    deadline = time.monotonic() + 5
    while not srv.notes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any("session server stopped: RuntimeError: bug in the accept path" in n for n in srv.notes)
    for n in range(3):
        srv.publish(step(n))  # still logged; no client can be served, and nothing raises
    srv.close(drain=0.1)
    assert [P.type_name(m) for m in read_log(tmp_path / "run" / "session.jsonl").messages] == [
        "hello", "step", "step", "step", "ended"]
    assert json.loads((tmp_path / "run" / "session.json").read_text())["end_reason"] == "closed"


def test_a_client_needs_neither_torch_nor_textual() -> None:
    """`workbench attach` on another machine's session: the client side imports no torch, no UI."""
    code = ("import sys\n"
            "from workbench.session import connect, list_sessions, SessionServer, ProtocolError\n"
            "from workbench.session import protocol\n"
            "bad = sorted(m for m in ('torch', 'textual', 'workbench.tui') if m in sys.modules)\n"
            "print('LOADED', bad)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def test_a_host_that_exits_without_closing_still_ends_its_session(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from workbench.session.transport import SessionServer\n"
            "srv = SessionServer(sys.argv[1], bind='unix:' + sys.argv[2])\n")
    sock = tmp_path / "s.sock"
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run"), str(sock)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    info = read_session(tmp_path / "run")
    assert info.ended and info.end_reason == "exited"
    assert not sock.exists() and not (tmp_path / "run" / "session.token").exists()
    msgs = connect(tmp_path / "run").poll()
    assert isinstance(msgs[-1], P.Ended) and "without closing" in msgs[-1].message
