"""The GPU check: one script, one CUDA GPU, under 8 minutes, one table of what the workbench does there.

    python benchmarks/gpu_check.py [--budget 470] [--keep DIR]
    python benchmarks/gpu_check.py --device cpu     # a rehearsal of the same code paths on the CPU

Rows (each through the project's own functions and commands; a row that cannot run says why):

* ``tax``: the debugger tax on the five shapes of benchmarks/test_debugger_tax.py: the bare
  step, naive ``.item()`` stats, ``lean`` (naive's numbers with one transfer per phase: on a
  GPU, what the syncs alone cost naive), the engine every step / every 16th step, ``workbench.watch``
  every step / every 16th (cnn_image, transformer_lm); timed with CUDA events after a
  synchronize, steps interleaved across variants (tax_harness.measure).
* ``bench``: ``run_bench`` rows fp32, amp (fp16 + GradScaler, with its skipped steps),
  amp-bf16, channels-last, compile, dataparallel (needs >= 2 GPUs: with one it must say so),
  ddp-1 (one rank, NCCL).
* ``run-memory``: ``workbench run --device cuda --json``: the last step's allocated, reserved
  and peak against ``torch.cuda.max_memory_allocated`` read in the same process right after.
* ``profile``: ``workbench profile`` on CUDA: Kernel and Memcpy time in the step breakdown
  (benchmarks/cuda_profile_check.py's checks).
* ``oom``: a real CUDA out-of-memory in a child process whose memory is capped with
  ``torch.cuda.set_per_process_memory_fraction`` (the one setting this script changes, for
  that process only, and set back to 1.0 before it exits): the engine must report it as
  out_of_memory and step again afterwards.
* ``diff-fp16``: ``workbench diff --b fp16 --device cuda``.
* ``syncs``: the engine stepped phase by phase under ``torch.cuda.set_sync_debug_mode("warn")``
  on batches of changing sizes (new sample sizes and layouts mid-training): every phase may
  wait for the device once, for its one transfer, and an unmeasured step only for the loss
  and the gradient norm.

No GPU setting is changed otherwise (no clocks, no persistence or compute mode, no MIG).
Exit 0 when every row that ran passed its checks (or when there is no CUDA device: then it
says "no CUDA device" and why), 1 when a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # tax_harness, cuda_profile_check

CNN = str(ROOT / "scenarios" / "cnn_image.py")
BENCH_ROWS = ("fp32", "amp", "amp-bf16", "channels-last", "dataparallel", "ddp-1", "compile")
BENCH_NEEDS = 180.0  # seconds the bench row may take: compile and the DDP launch are the long ones


@dataclass
class RowResult:
    name: str
    status: str  # PASS, FAIL, SKIP
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Check:
    """Collects one row's output lines and its pass/fail checks."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed: list[str] = []
        self.skipped: str | None = None

    def skip(self, why: str) -> None:
        self.skipped = why
        self.say(f"SKIP: {why}")

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(f"    {line}", flush=True)

    def expect(self, ok: bool, what: str) -> None:
        self.say(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failed.append(what)


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


# -- rows ------------------------------------------------------------------------------


def row_tax(c: Check, device: str, rounds: int) -> None:
    import torch

    from tax_harness import SCENARIOS, VARIANTS, measure, perf_block, table_header, table_row, watch

    def cuda_block(step: Callable[[], object], n: int) -> float:
        # Synchronised at both ends: the events bracket the device work of exactly these steps.
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    timer = cuda_block if device == "cuda" else perf_block
    columns = ["naive", "lean", "engine/1", "engine/16", "watch/1", "watch/16"]
    for line in table_header(columns, f"debugger tax on {device} ({'CUDA events' if device == 'cuda' else 'perf_counter'}, "
                                      f"{rounds} rounds interleaved step by step)"):
        c.say(line)
    targets = {"engine/1": 1.25, "engine/16": 1.05}
    for name in SCENARIOS:
        variants = {k: VARIANTS[k] for k in ("bare", "naive", "lean", "engine/1", "engine/16")}
        if name in ("cnn_image", "transformer_lm"):
            for every in (1, 16):
                make = watch(every)
                if make is not None:
                    variants[f"watch/{every}"] = make
        row = measure(name, variants, rounds=rounds, device=device, timer=timer)
        c.say(table_row(row, columns))
        for col, target in targets.items():
            if row.ratio(col) > target:
                c.say(f"note: {name} {col} {row.ratio(col):.2f}x is over its {target:.2f}x target")
    c.expect(True, "tax measured on all five shapes")


def row_bench(c: Check, device: str) -> None:
    import torch

    from workbench.bench.runner import BenchProgress, run_bench
    from workbench.bench.timing import Plan
    from workbench.scenario import load_source

    def finished(p: BenchProgress) -> None:
        # Each row as it ends: a compile that hangs, or the machine's time running out, keeps the others.
        if p.result is not None:
            c.say(f"done: {p.variant} {p.result.status} {p.result.reason}".rstrip())

    run = run_bench(load_source(CNN), list(BENCH_ROWS), device=device, plan=Plan(warmup=3, steps=12),
                    progress=finished)
    for r in run.results:
        t = r.timing
        median = f"{1e3 * t.median:.2f} ms" if t is not None and getattr(t, "median", None) is not None else "-"
        speed = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        extras = ", ".join(f"{k}={v}" for k, v in sorted(r.extras.items()) if not isinstance(v, (dict, list)))
        c.say(f"{r.name:14s} {r.status:8s} step {median:>10s}  speedup {speed:>6s}  peak {_mib(r.peak_memory):>10s}"
              f"  {r.reason}{'  ' + extras if extras else ''}")
        if r.status == "failed" and r.extras.get("traceback"):
            c.say(f"{r.name} traceback (end): {str(r.extras['traceback'])[-800:]}")
    by = {r.name: r for r in run.results}
    c.expect(by["fp32"].ok, "fp32 ran")
    if device == "cuda":
        amp = by["amp"]
        c.expect(amp.ok and "gradscaler_skipped_steps" in amp.extras,
                 f"amp (fp16 + GradScaler) ran and counts skipped steps ({amp.extras.get('gradscaler_skipped_steps')})")
        bf16 = by["amp-bf16"]
        if torch.cuda.is_bf16_supported():
            c.expect(bf16.ok, "amp-bf16 ran (this GPU supports bf16)")
        else:
            c.expect(bf16.status == "skipped", f"amp-bf16 skipped on a GPU without bf16: {bf16.reason!r}")
        dp = by["dataparallel"]
        if torch.cuda.device_count() < 2:
            c.expect(dp.status == "skipped" and "≥2" in dp.reason,
                     f"dataparallel with one GPU says it needs >= 2: {dp.reason!r}")
        else:
            c.expect(dp.ok, "dataparallel ran on several GPUs")
        ddp = by["ddp-1"]
        backend = ddp.extras.get("backend")
        c.expect(ddp.ok and backend == "nccl", f"ddp-1 ran over NCCL (backend {backend})")
        # A failure (no Triton, no C compiler, no Python.h) is a FAIL with its reason, not a pass.
        c.expect(by["compile"].ok or by["compile"].status == "skipped",
                 f"compile ran or was skipped with a reason ({by['compile'].status}: {by['compile'].reason})")
    else:
        c.say("(CPU rehearsal: the CUDA-only expectations are not checked)")


def _cli(args: list[str]) -> tuple[int, str]:
    from workbench.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            rc = main(args)
        except SystemExit as exc:  # the CLI's own exit codes
            rc = exc.code if isinstance(exc.code, int) else 1
    return int(rc or 0), out.getvalue()


def row_run_memory(c: Check, device: str, tmp: Path) -> None:
    import torch

    report = tmp / "run.json"
    rc, _ = _cli(["run", CNN, "--device", device, "--steps", "6", "--json", str(report)])
    c.expect(rc in (0, 1), f"workbench run --device {device} finished (exit {rc})")
    data = json.loads(report.read_text())
    mem = data["steps"][-1]["memory"]
    c.say(f"last step: allocated {_mib(mem['cuda_allocated'])}, reserved {_mib(mem['cuda_reserved'])}, "
          f"peak {_mib(mem['cuda_peak'])}, RSS {_mib(mem['rss_bytes'])}, activations {_mib(mem['activation_bytes'])}; "
          f"report peak {_mib(data['summary'].get('peak_cuda_bytes'))}")
    if device != "cuda":
        c.say("(CPU rehearsal: no CUDA counters to compare)")
        return
    # The engine resets the peak as each step starts, so the process-wide figure read now is
    # the last step's peak; allocated must match exactly (nothing ran in between).
    peak, allocated = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
    c.say(f"torch.cuda.max_memory_allocated {_mib(peak)}, memory_allocated {_mib(allocated)}")
    c.expect(mem["cuda_peak"] == peak, "the last step's peak equals torch.cuda.max_memory_allocated()")
    c.expect(mem["cuda_reserved"] >= mem["cuda_peak"] >= mem["cuda_allocated"] > 0, "reserved >= peak >= allocated > 0")


def row_profile(c: Check, device: str, tmp: Path, seconds: float) -> None:
    if device != "cuda":
        c.skip("the Kernel/Memcpy breakdown needs a CUDA trace")
        return
    # In a fresh process with a timeout: a profiler that hangs (CUPTI) cannot stall the rest,
    # and the trace is not taken late in a process that has run for minutes.
    proc = subprocess.run([sys.executable, str(HERE / "cuda_profile_check.py"), "--logdir", str(tmp / "profile"),
                           "--scenario", CNN], capture_output=True, text=True, timeout=max(30.0, min(180.0, seconds)))
    rc, text = proc.returncode, proc.stdout
    if rc != 0:
        c.say(proc.stderr[-800:])
    for line in text.splitlines():
        if line.startswith(("step", "ProfilerStep", "GPU", "memory", "PASS", "FAIL", "device")):
            c.say(line)
    c.expect(rc == 0, "cuda_profile_check passed (kernel time in every step)")
    c.expect("memcpy" in text.lower(), "Memcpy time shows in the breakdown")


OOM_CHILD = "--oom-child"


def oom_child() -> int:
    """Run in a child process: cap this process's CUDA memory, overflow it, report, restore."""
    import torch
    from torch import nn

    from workbench.engine import Engine, StepError
    from workbench.scenario import Scenario

    total = torch.cuda.get_device_properties(0).total_memory
    cap = 256 * 2**20  # this process may allocate 256 MiB of the device, whatever its size
    torch.cuda.set_per_process_memory_fraction(cap / total, 0)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1)).cuda()  # 4 MiB
        g = torch.Generator().manual_seed(0)
        # 96 MiB of inputs fit under the cap with the model; the first Linear's output (96 MiB)
        # does too, the ReLU's (96 MiB more) does not: a real OOM inside the first forward. The
        # step after it (the same model, a small batch, gradients and the measured step's copy
        # of the parameters: a few MiB) fits, once the engine has let the failed step's memory go.
        big = [(torch.randn(24576, 1024, generator=g), torch.randn(24576, 1, generator=g))]
        small = [(torch.randn(64, 1024, generator=g), torch.randn(64, 1, generator=g))]
        t0 = time.perf_counter()
        s = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
                     loss_fn=nn.MSELoss(), data=big, name="oom-check")
        with Engine(s) as eng:
            try:
                eng.step_once()
                print("RESULT no-oom: the step fit under the cap")
                return 1
            except StepError as err:
                print(f"RESULT oom={err.oom} kind={err.kind} in the {err.stage} after {time.perf_counter() - t0:.2f} s")
                print(f"MESSAGE {str(err).splitlines()[0][:300]}")
        s2 = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
                      loss_fn=nn.MSELoss(), data=small, name="after-oom")
        with Engine(s2) as eng:
            try:
                rec = eng.step_once()
            except StepError as err:
                print(f"AFTER step failed: {str(err).splitlines()[0][:300]}")
                return 1
        print(f"AFTER step ok, loss {rec.loss:.4f}, allocated {torch.cuda.memory_allocated() / 2**20:.1f} MiB")
        return 0
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)  # back to the default


def row_oom(c: Check, device: str, seconds: float) -> None:
    if device != "cuda":
        c.skip("set_per_process_memory_fraction and a CUDA OOM need a CUDA device")
        return
    proc = subprocess.run([sys.executable, __file__, OOM_CHILD], capture_output=True, text=True,
                          timeout=max(20.0, min(120.0, seconds)))
    for line in proc.stdout.splitlines():
        c.say(line)
    if proc.returncode != 0:
        c.say(proc.stderr[-800:])
    c.expect("RESULT oom=True" in proc.stdout, "the engine reports a real CUDA OOM as out of memory")
    c.expect("AFTER step ok" in proc.stdout, "the next step runs after the OOM")


def row_diff(c: Check, device: str, tmp: Path) -> None:
    out = tmp / "diff.json"
    rc, _ = _cli(["diff", CNN, "--device", device, "--b", "fp16", "--json", str(out)])
    data = json.loads(out.read_text())
    worst = max(data["layers"], key=lambda d: d.get("rel_error") or 0.0, default=None)
    rel = worst.get("rel_error") if worst else None
    c.say(f"loss fp32 {data['loss_a']:.5f} fp16 {data['loss_b']:.5f}; diverged {data['diverged']}; "
          f"first over {data['first_over']}; worst layer {worst['name'] if worst else '-'} "
          f"rel error {rel if rel is not None else float('nan'):.2e}")
    for note in data.get("notes", []):
        c.say(f"note: {note}")
    c.expect(rc in (0, 1) and data["device"].startswith(device), f"workbench diff --b fp16 on {device} (exit {rc})")


def row_syncs(c: Check, device: str) -> None:
    if device != "cuda":
        c.skip("torch.cuda.set_sync_debug_mode is CUDA's: on the CPU every read is immediate")
        return
    import warnings

    import torch
    from torch import nn

    from workbench.engine import Engine, EngineConfig
    from workbench.scenario import Scenario

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.Tanh(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)).cuda()
    g = torch.Generator().manual_seed(0)
    # On the device already: the batch copy is the user's data, not the engine's doing.
    data = [(torch.randn(n, 32, generator=g).cuda(), torch.randn(n, 1, generator=g).cuda())
            for n in (64, 7, 50, 64, 3, 1000, 9, 64, 33)]  # an odd count: every size is measured once
    scenario = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                        loss_fn=nn.MSELoss(), data=data)
    worst: dict[tuple[bool, str], int] = {}
    first: list[str] = []
    with Engine(scenario, EngineConfig(stats_every=2)) as eng:
        for _ in range(4 * len(data)):
            progress = eng.current
            measured = progress.measured
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    result = eng.advance()
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            syncs = sum("synchronizing" in str(w.message) for w in caught)
            if progress.step == 0:  # the first measured step also reads the input scale, once
                first.append(f"{result.phase} {syncs}")
                continue
            key = (measured, str(result.phase))
            worst[key] = max(worst.get(key, 0), syncs)
    c.say(f"step 0 (with the one-time input-scale read): {', '.join(first)}")
    for measured in (True, False):
        counts = ", ".join(f"{phase} {n}" for (m, phase), n in worst.items() if m == measured)
        c.say(f"{'measured' if measured else 'unmeasured'} steps, most syncs per phase: {counts}")
    c.expect(all(n <= 1 for n in worst.values()), "at most one sync per phase (its transfer)")
    c.expect(worst.get((False, "forward"), 0) == 0 and worst.get((False, "optimizer_step"), 0) == 0,
             "an unmeasured step waits only for the loss and the gradient norm")


# -- driver ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default); cpu rehearses the same code paths (figures are not GPU figures)")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for all rows (default 470)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the tax table (default 5)")
    # The quick checks first, the long tables last: a budget that runs out skips the least.
    parser.add_argument("--rows", default="run-memory,oom,syncs,profile,diff-fp16,tax,bench")
    parser.add_argument("--keep", metavar="DIR", help="keep reports and traces here")
    args = parser.parse_args(argv)

    from workbench.profiling.native_logs import quiet_native_logs

    quiet_native_logs()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}, {torch.cuda.device_count()} devices). Nothing was measured; run this on "
              "a machine with a GPU (or --device cpu to rehearse the code paths).")
        return 0
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} GPU(s), "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"CPU rehearsal, torch {torch.__version__}: these are not GPU figures")
    os.environ.setdefault("WB_TAX_THREADS", str(torch.get_num_threads()))

    with contextlib.ExitStack() as stack:
        tmp = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        tmp.mkdir(parents=True, exist_ok=True)
        rows: dict[str, Callable[[Check], None]] = {
            "tax": lambda c: row_tax(c, args.device, args.rounds),
            "bench": lambda c: row_bench(c, args.device),
            "run-memory": lambda c: row_run_memory(c, args.device, tmp),
            "profile": lambda c: row_profile(c, args.device, tmp, args.budget - (time.perf_counter() - start) - 10),
            "oom": lambda c: row_oom(c, args.device, args.budget - (time.perf_counter() - start) - 10),
            "diff-fp16": lambda c: row_diff(c, args.device, tmp),
            "syncs": lambda c: row_syncs(c, args.device),
        }
        wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [r for r in wanted if r not in rows]
        if unknown:
            parser.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(rows)}")
        start = time.perf_counter()
        results: list[RowResult] = []
        for name in wanted:
            left = args.budget - (time.perf_counter() - start)
            # The bench row has no deadline of its own (a cold compile cache, a DDP spawn): it
            # starts only with some minutes left, so the script still prints its table in time.
            if left < (BENCH_NEEDS if name == "bench" else 20):
                results.append(RowResult(name, "SKIP", [f"out of time: {left:.0f} s of the {args.budget:.0f} s budget left"]))
                print(f"== {name}: SKIP, out of time ({left:.0f} s left)", flush=True)
                continue
            print(f"== {name}", flush=True)
            c = Check()
            t0 = time.perf_counter()
            try:
                rows[name](c)
                status = "FAIL" if c.failed else "SKIP" if c.skipped else "PASS"
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI rows install that handler): the table still prints
                c.say("FAIL interrupted")
                results.append(RowResult(name, "FAIL", c.lines, time.perf_counter() - t0))
                break
            except Exception as exc:  # one row's failure must not hide the others
                c.say(f"FAIL {type(exc).__name__}: {exc}")
                status = "FAIL"
            results.append(RowResult(name, status, c.lines, time.perf_counter() - t0))
    print("\n| row | status | seconds |\n|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.status} | {r.seconds:.0f} |")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == OOM_CHILD:
        sys.exit(oom_child())
    sys.exit(main())
