"""Profile cnn_image on a CUDA device and check that kernel time shows in the breakdown.

Run on a machine with a GPU (CI has none, so the matching test in
tests/test_profile_cli.py is skipped there):

    python benchmarks/cuda_profile_check.py [--logdir DIR] [--scenario PATH]

Prints the device, the per-step breakdown, the GPU utilisation, the top
operators by device time, the memory peak and the recommendations, then one
line per check. Exit 0 when every check passes, 1 when one fails, 0 with
"SKIPPED" and the reason when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", help="keep the trace here (default: a temp dir, removed after)")
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "cnn_image.py"))
    args = parser.parse_args(argv)

    from workbench.profiling.native_logs import quiet_native_logs

    quiet_native_logs()
    import torch

    if not torch.cuda.is_available():
        print(f"SKIPPED: torch.cuda.is_available() is False (torch {torch.__version__}, "
              f"CUDA build {torch.version.cuda}); run this on a machine with a GPU.")
        return 0
    if args.logdir:
        return _check(Path(args.logdir), args.scenario)
    with tempfile.TemporaryDirectory(prefix="cuda-profile-") as tmp:
        return _check(Path(tmp), args.scenario)


def _check(logdir: Path, scenario: str) -> int:
    import torch

    from workbench.profiling.analysis import top_operators
    from workbench.profiling.export import run_profile
    from workbench.profiling.options import ProfileOptions
    from workbench.profiling.runs import analyze_path
    from workbench.scenario import load_source

    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    result = run_profile(load_source(scenario), "cuda", logdir,
                         ProfileOptions(wait=1, warmup=2, active=3, memory=True, shapes=True), run="cuda-check")
    print(f"trace: {', '.join(str(f) for f in result.files)}")
    if result.estimate is not None:
        print(f"estimate: {result.estimate.total_bytes / 2**20:.2f} MB for {result.estimate.active_steps} steps; "
              f"written: {sum(f.stat().st_size for f in result.files) / 2**20:.2f} MB")
    run = analyze_path(result.run_dir)
    (a,) = run.workers
    checks: list[tuple[str, bool]] = []
    for step in a.steps:
        parts = ", ".join(f"{c} {t / 1e3:.2f}" for c, t in step.categories if t > 0)
        total = sum(t for _, t in step.categories)
        print(f"{step.name}: {step.duration_us / 1e3:.2f} ms = {parts}")
        checks.append((f"{step.name} has kernel time", step.time("kernel") > 0))
        checks.append((f"{step.name} categories sum to the step", abs(total - step.duration_us) <= 1e-6 * step.duration_us))
    util = a.gpu_utilization
    print(f"GPU kernel-busy share: {util * 100:.1f}%" if util is not None else "GPU kernel-busy share: none")
    print(f"Tensor Core kernel time {a.tensor_core_kernel_us / 1e3:.2f} ms of {a.kernel_sum_us / 1e3:.2f} ms; "
          f"eligible ops' kernel time {a.tc_eligible_kernel_us / 1e3:.2f} ms")
    for op in top_operators(a.operators, 8, by="self_device_us"):
        print(f"  {op.name:40s} calls {op.calls:3d}  self device {op.self_device_us / 1e3:7.2f} ms  "
              f"self CPU {op.self_cpu_us / 1e3:7.2f} ms  {op.input_shapes or ''}")
    for k in a.kernels[:8]:
        print(f"  kernel {k.name[:70]:70s} x{k.calls:<3d} {k.total_us / 1e3:7.2f} ms  "
              f"Tensor Cores: {'yes' if k.tensor_core else 'no'}")
    for m in a.memory:
        cap = f" of {m.capacity_bytes / 2**30:.1f} GiB" if m.capacity_bytes else ""
        print(f"memory {m.device}: peak {m.peak_bytes / 2**20:.1f} MiB{cap} at {m.peak_step} {m.peak_phase or ''}")
    for r in run.recommendations:
        print(f"recommendation [{r.rule}] {r.message} ({r.threshold}; measured {r.measured}) -> {r.command(scenario)}")
    if not run.recommendations:
        print("recommendations: none fired")
    checks.append(("device properties recorded", bool(a.devices)))
    checks.append(("operators carry device time", any(o.self_device_us > 0 for o in a.operators)))
    checks.append(("a cuda memory curve", any(m.device.startswith("cuda") for m in a.memory)))
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
