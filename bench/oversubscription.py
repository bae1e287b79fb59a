"""CPU oversubscription: wsss alone vs beside busy-loop processes, before vs after the thread policy.

Usage: python bench/oversubscription.py [--workload steps|demo|both] [--rounds 3] [--busy 2]
           [--steps 8] [--variants before,after] [--timeout 300]

Issue 16: on a 2-core machine busy with other jobs the demo ran 28x slower for a 2-3.5x share of
the cores. This times, in fresh processes, ``steps``: a fixed number of training steps of the
demo's nano Conformer (BNR, batch 16, 96x96), and ``demo``: ``wsss demo --quick`` end to end;
each alone and beside ``--busy`` processes running ``while True: pass``. Variants:

- before: libgomp's default wait (spin 300,000 iterations, then sleep); for ``demo`` given as
  GOMP_SPINCOUNT=300000, libgomp's own default written out, so that the CLI leaves it alone
- after: the wsss policy (wsss.threads.apply_wait_policy: GOMP_SPINCOUNT=10000)
- passive: OMP_WAIT_POLICY=PASSIVE (sleep at once); spinN (e.g. spin1000): GOMP_SPINCOUNT=N
- one-thread: before, with OMP_NUM_THREADS=1 (other numbers: results depend on the thread count)

Rounds are interleaved (every variant and load once per round) so that drifting background load
hits all cells alike. The table gives medians, the load average (1 min) seen at each start, and
the slowdown beside the busy loops. With N cores, T threads of ours and B busy loops, a fair
scheduler leaves us max(1, (T + B) / N) of the alone time: 2x for 2 torch threads + 2 loops on 2
cores. Other processes on the machine add to both: run it on an otherwise idle machine, or as
root under ``nice -n -15`` (the busy loops inherit it) so that the rest of the machine counts less.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS: dict[str, dict[str, str]] = {  # extra environment of each variant
    "before": {},
    "after": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}
POLICY_VARIANTS = {"after"}  # those that run with the wsss policy
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
CLEAN = (*WAIT_VARIABLES, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def child_steps(steps: int, policy: bool) -> None:
    """Run ``steps`` training steps of the demo's classifier on random data; print JSON timing."""
    if policy:
        from wsss.threads import apply_wait_policy

        apply_wait_policy()
    import torch

    from wsss.registry import CAM_MODELS, METHODS

    torch.manual_seed(0)
    model = CAM_MODELS.build(
        "transcam", where="bench", backbone="conformer_nano", num_classes=6, pretrained=None
    )
    method = METHODS.build_with_compat(
        "bnr", "bench", {"noise_scale": 1.0, "detach_attention": False}, "clean"
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(16, 3, 96, 96)
    y = (torch.rand(16, 5) > 0.5).float()

    def step() -> None:
        loss = method.step(model, x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


def known(variant: str) -> bool:
    return variant in VARIANTS or (variant.startswith("spin") and variant[4:].isdigit())


def variant_env(variant: str, workload: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(VARIANTS.get(variant, {"GOMP_SPINCOUNT": variant[4:]}))  # spinN: GOMP_SPINCOUNT=N
    if workload == "demo" and variant not in POLICY_VARIANTS and not any(k in env for k in WAIT_VARIABLES):
        env["GOMP_SPINCOUNT"] = "300000"  # the CLI would otherwise apply the policy
    return env


def run_once(workload: str, variant: str, args: argparse.Namespace, tmp: Path) -> tuple[float | None, str]:
    """Seconds of one fresh-process run (None: past --timeout) and, for the demo, its stage times."""
    env = variant_env(variant, workload)
    if workload == "steps":
        cmd = [sys.executable, __file__, "--child-steps", str(args.steps)]
        cmd += ["--child-policy"] * (variant in POLICY_VARIANTS)
    else:
        out = tmp / f"demo-{variant}-{time.monotonic_ns()}"
        cmd = [sys.executable, "-m", "wsss", "demo", "--quick", "--device", "cpu", "--out", str(out)]
    start = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    wall = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{(res.stdout + res.stderr)[-3000:]}")
    if workload == "steps":
        return float(json.loads(res.stdout.strip().splitlines()[-1])["seconds"]), ""
    stages = json.loads((out / "run.json").read_text())["stages"]
    shutil.rmtree(out, ignore_errors=True)
    return wall, "  (" + ", ".join(f"{name} {info['seconds']:.1f}" for name, info in stages.items()) + ")"


def start_busy(n: int) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(1.0)  # let the scheduler see them as CPU-bound
    return procs


def stop_busy(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def fmt(values: list[float | None], timeout: float) -> str:
    done = [v for v in values if v is not None]
    if len(done) < len(values):
        return f">{timeout:.0f}" if not done else f"{statistics.median(done):.1f}*"
    return f"{statistics.median(done):.2f}" if done else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["steps", "demo", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the run")
    parser.add_argument("--steps", type=int, default=8, help="training steps per 'steps' run")
    parser.add_argument(
        "--variants", default="before,after", help=f"comma-separated, of {', '.join(VARIANTS)}, spinN"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a run counts as '>'")
    parser.add_argument("--budget", type=float, default=None, help="start no round that would end past this")
    parser.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-policy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_steps is not None:
        child_steps(args.child_steps, args.child_policy)
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if not known(v)]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    workloads = ["steps", "demo"] if args.workload == "both" else [args.workload]
    loads = ["alone", f"+{args.busy} busy"] if args.busy > 0 else ["alone"]
    times: dict[tuple[str, str, str], list[float | None]] = {}
    seen: dict[tuple[str, str, str], list[float]] = {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} usable cores; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="wsss-oversub-"))
    begin, longest = time.perf_counter(), 0.0
    try:
        for r in range(args.rounds):
            started = time.perf_counter()
            if args.budget is not None and started - begin + longest > args.budget:
                print(f"stopping after {r} rounds: another would pass --budget {args.budget:.0f} s")
                break
            for load in loads:  # alone first, then beside the loops: one set of loops per round
                busy = start_busy(args.busy) if load != "alone" else []
                try:
                    for workload in workloads:
                        for variant in variants:
                            key = (workload, variant, load)
                            seen.setdefault(key, []).append(os.getloadavg()[0])
                            t, note = run_once(workload, variant, args, tmp)
                            times.setdefault(key, []).append(t)
                            shown = f"{t:.2f} s" if t is not None else f">{args.timeout:.0f} s"
                            print(
                                f"round {r + 1} {workload:5s} {variant:10s} {load:8s} {shown}{note}",
                                flush=True,
                            )
                finally:
                    stop_busy(busy)
            longest = max(longest, time.perf_counter() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    unit = {"steps": f"s / {args.steps} steps", "demo": "s wall"}
    print(
        f"\n{'workload':8s} {'variant':10s} {'alone':>9s} {loads[-1]:>9s} {'slowdown':>8s}  load avg (1 min)"
    )
    for workload in workloads:
        for variant in variants:
            if (workload, variant, loads[-1]) not in times:
                continue
            a, b = times[(workload, variant, loads[0])], times[(workload, variant, loads[-1])]
            ratio = "-"
            if all(v is not None for v in a + b):
                ratio = f"{statistics.median(b) / statistics.median(a):.1f}x"  # type: ignore[type-var, operator]
            lo = min(v for load in loads for v in seen[(workload, variant, load)])
            hi = max(v for load in loads for v in seen[(workload, variant, load)])
            print(
                f"{workload:8s} {variant:10s} {fmt(a, args.timeout):>9s} {fmt(b, args.timeout):>9s} "
                f"{ratio:>8s}  {lo:.1f}-{hi:.1f}  ({unit[workload]}, median of {len(b)})"
            )


if __name__ == "__main__":
    main()
