"""Where a UniA training step's time goes on a CPU, and the sampling shortcut's gain.

The ``synth/unia-tiny`` network and objective (tiny ViT, batch 16, 96×96, every term on) with random
weights and images: one full step (online labels + graded forward + backward) against its parts — the
no-grad multi-scale CAMs and labels P1/P2/P3/MCR, and the graded forward + losses + backward. Then the
uncertainty head's sampled mean as drawn now (one standard draw scaled by 1/√50, the distribution of
the mean of 50 draws) against drawing the 50 samples (the released code's way), on the head's
B×N×C tensor. Rounds are interleaved and the medians reported, with the load average beside them.

    python bench/unia_step.py                # 5 rounds, 2 threads
    python bench/unia_step.py --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from wsss.config import load_recipe
from wsss.engine.progress import TrainProgress
from wsss.models.modules.uncertainty_inference import sample_mean
from wsss.registry import CAM_MODELS, METHODS


def fifty_draws(mean: torch.Tensor, log_var: torch.Tensor, samples: int = 50) -> torch.Tensor:
    """The mean of ``samples`` reparameterised draws, drawn one by one (the 'before')."""
    noise = torch.stack([torch.randn_like(mean) for _ in range(samples)]).mean(0)
    return mean + noise * torch.exp(0.5 * log_var)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = load_recipe("synth/unia-tiny").classifier
    model = CAM_MODELS.build(
        "unia", backbone=c.backbone, num_classes=7, pretrained=None, **c.model_args
    ).train()
    method_args = {**c.method_args, "starts": {"ptc": 0, "aff": 0, "dis": 0, "seg": 0, "reg": 0}}
    objective = METHODS.build_with_compat("unia", "classifier.method", method_args, "clean")
    x = torch.randn(16, 3, 96, 96)
    y = (torch.rand(16, 6) > 0.6).float()
    y[:, 0] = 1.0
    progress = TrainProgress(1000, 2000, 0)

    def full() -> None:
        objective.step(model, x, y, progress)["loss"].backward()

    def labels_only() -> None:
        with torch.no_grad():
            objective.pseudo_labels(model, x, y, model(x).affinity, 1000)

    fixed = None

    def graded_only() -> None:
        nonlocal fixed
        if fixed is None:
            with torch.no_grad():
                fixed = objective.pseudo_labels(model, x, y, model(x).affinity, 1000)
        objective.losses(model(x), x, y, fixed, 1000)["loss"].backward()

    mean, log_var = torch.randn(16, 144, 64), torch.randn(16, 144, 64) * 0.1
    cases = {
        "full step (labels + forward + backward)": full,
        "online labels: multi-scale CAMs, P1/P2/P3, MCR (no grad)": labels_only,
        "graded forward + losses + backward": graded_only,
        "sampled mean, one scaled draw (now)": lambda: sample_mean(mean, log_var, 50),
        "sampled mean, 50 draws (released code)": lambda: fifty_draws(mean, log_var),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds, load average {load:.1f}")
    print("| what | median s |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.4f} |")
    med = [statistics.median(values) for values in times.values()]
    share, gain = med[1] / med[0], med[4] / med[3]
    print(f"online labels: {100 * share:.0f} % of a step; sampling: one scaled draw {gain:.0f}x faster")


if __name__ == "__main__":
    main()
