"""GPU checks at paper scale that the CPU machines cannot run: time and peak memory of each.

Four measurements, each independent (one failing is reported and the others still run):

1. ``train``: one AMP (bf16) training step of TransCAM + BNR on Conformer-S at 512×512, batch 8
   (the VOC recipe's classifier step), median of a few steps after warm-up;
2. ``cams``: batched multi-scale + flip CAMs (square 256/512/768 × flip, A*·M) of 8 VOC-size
   images, with the CPU PIL resize (the recipes' default, as TransCAM) and the on-device
   torchvision resize, interleaved, with the largest difference between their maps;
3. ``ddp``: a one-process NCCL group running one DeepLab-LargeFOV/ResNet-38 step (SyncBatchNorm,
   as ``voc/transcam``'s segmentation stage) under DDP, checked against the same step without
   DDP (one process: the gradients must agree);
4. the device, torch and CUDA versions.

    python bench/gpu_check.py             # all checks (needs CUDA)
    python bench/gpu_check.py --only cams --images 2
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from wsss.cams.inference import multiscale_cams
from wsss.engine.amp import autocast
from wsss.registry import CAM_MODELS, LOSSES, METHODS, SEG_MODELS

MiB = 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sync_time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    return f"{torch.cuda.max_memory_allocated(device) / MiB:.0f} MiB"


def check_train(device: torch.device, backbone: str, batch: int, size: int, steps: int) -> dict[str, str]:
    """One BNR training step of Conformer-S in bf16 autocast (AdamW), as train-cls runs it."""
    torch.manual_seed(0)
    model = CAM_MODELS.build("transcam", backbone=backbone, num_classes=21).to(device).train()
    objective = METHODS.build("bnr", noise_scale=1.0, detach_attention=False)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    labels = (torch.rand(batch, 20, device=device) < 0.15).float()
    losses: list[float] = []

    def step() -> None:
        with autocast(device, "bf16"):
            parts = objective(model(x, with_attention=objective.needs_attention), labels)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        losses.append(float(parts["loss"].detach()))

    step()  # warm-up (cuDNN autotune, allocator)
    _reset_peak(device)
    times = [_sync_time(step, device) for _ in range(steps)]
    return {
        "what": f"BNR step, {backbone}, bf16, batch {batch}, {size}x{size}",
        "time": f"{statistics.median(times):.3f} s/step (median of {steps})",
        "peak": _peak(device),
        "note": f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, finite: {all(map(lambda v: v == v, losses))}",
    }


def check_cams(
    device: torch.device, backbone: str, n_images: int, rounds: int, scales: list[float]
) -> dict[str, str]:
    """Batched MS+flip CAMs of VOC-size images, PIL resize vs on-device resize, interleaved."""
    torch.manual_seed(0)
    model = CAM_MODELS.build("transcam", backbone=backbone, num_classes=21).to(device).eval()
    cam_fn = partial(model.extract, method="transcam")
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=gen) for _ in range(n_images)]
    labels = [(torch.arange(20) % (i + 3) == 0).float() for i in range(n_images)]
    run = partial(multiscale_cams, cam_fn, images, labels, scales=scales, flip=True)
    run(device=device, batched=True, resize="torch")  # warm-up
    _reset_peak(device)
    times: dict[str, list[float]] = {"pil": [], "torch": []}
    maps: dict[str, list[torch.Tensor]] = {}
    for _ in range(rounds):
        for kernel in ("pil", "torch"):
            box: dict[str, list[torch.Tensor]] = {}

            def go(kernel: str = kernel, box: dict = box) -> None:
                box["out"] = run(device=device, batched=True, resize=kernel)

            times[kernel].append(_sync_time(go, device) / n_images)
            maps[kernel] = box["out"]
    # random-init maps are large: the difference relative to each map's scale
    diff = max(
        float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
        for a, b in zip(maps["pil"], maps["torch"])
    )
    pil, tv = statistics.median(times["pil"]), statistics.median(times["torch"])
    return {
        "what": f"MS+flip CAMs ({'/'.join(f'{v:g}' for v in scales)} x flip, A*M), {backbone}, "
        f"{n_images} images 500x375, batched",
        "time": f"PIL resize {pil:.3f} s/img, device resize {tv:.3f} s/img (PIL/device {pil / tv:.2f}x)",
        "peak": _peak(device),
        "note": f"max |PIL - device| / max |map| = {diff:.1e} (random weights)",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_ddp(device: torch.device, batch: int, size: int) -> dict[str, str]:
    """One-process NCCL DDP step of DeepLab-LargeFOV with SyncBatchNorm == the plain step."""
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    build = partial(SEG_MODELS.build, "deeplab_largefov", backbone="resnet38", num_classes=21)
    plain = build().to(device).train()
    synced = build().to(device).train()
    synced.load_state_dict(plain.state_dict())
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 21, (batch, size, size), device=device)
    loss_fn = LOSSES.build("ce")  # upsamples the stride-8 logits to the labels, as train-seg
    torch.manual_seed(1)  # the head's dropout draws the same mask in both steps
    loss_fn(plain(x), y)["loss"].backward()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    on_gpu = device.type == "cuda"
    if on_gpu:
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(synced)  # GPU-only in torch
    else:  # a CPU smoke run of this script: gloo, plain BatchNorm
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(synced, device_ids=[device.index] if on_gpu else None)
        _reset_peak(device)

        def step() -> None:
            ddp.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            loss_fn(ddp(x), y)["loss"].backward()

        elapsed = _sync_time(step, device)  # first DDP step: bucket set-up included
        grads = [
            (p.grad, q.grad.clone())
            for p, q in zip(plain.parameters(), ddp.module.parameters())
            if p.grad is not None and q.grad is not None
        ]
        elapsed2 = _sync_time(step, device)
        peak = _peak(device)
        rel = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in grads)
        backend = dist.get_backend()
    finally:
        dist.destroy_process_group()
    return {
        "what": f"DDP step ({backend}, 1 process, SyncBN), DeepLab-LargeFOV/ResNet-38, batch {batch}, {size}x{size}",
        "time": f"{elapsed:.3f} s first step, {elapsed2:.3f} s second",
        "peak": peak,
        "note": f"max rel. grad difference vs no DDP: {rel:.1e} over {len(grads)} tensors",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["train", "cams", "ddp"], nargs="*", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (the check); cpu only smoke-tests this script")
    ap.add_argument("--backbone", default="conformer_small")
    ap.add_argument("--scales", type=float, nargs="+", default=[256.0, 512.0, 768.0])
    ap.add_argument("--ddp-size", type=int, default=448)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu_check.py needs a CUDA device (--device cpu only smoke-tests it)")
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True
        props = torch.cuda.get_device_properties(device)
        print(
            f"# {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    else:
        device = torch.device("cpu")
        print(f"# CPU smoke run, torch {torch.__version__}")
    checks = {
        "train": partial(check_train, device, args.backbone, args.batch, args.size, args.steps),
        "cams": partial(check_cams, device, args.backbone, args.images, args.rounds, args.scales),
        "ddp": partial(check_ddp, device, 2, args.ddp_size),
    }
    for name, fn in checks.items():
        if args.only and name not in args.only:
            continue
        try:
            row = fn()
        except Exception as exc:  # report and go on: each check is independent
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(
            f"[{name}] {row['what']}\n    time: {row['time']}\n    peak: {row['peak']}\n    {row['note']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
