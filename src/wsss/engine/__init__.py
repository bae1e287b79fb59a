"""Training engine: device choice, seeding, exact-resume checkpoints, AMP, DDP helpers, optimisers, logs."""

from wsss.engine.amp import AMP_MODES, amp_dtype, autocast, make_grad_scaler
from wsss.engine.checkpoint import (
    export_weights,
    load_model_state,
    load_training_state,
    load_weights,
    read_weights,
    save_training_state,
)
from wsss.engine.device import resolve_device
from wsss.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    destroy,
    get_rank,
    get_world_size,
    init_distributed,
    is_main,
    parse_shard,
    shard_indices,
    unwrap,
    wrap_ddp,
)
from wsss.engine.optim import (
    COMPAT_MODES,
    LegacyPolySGD,
    make_poly_scheduler,
    make_sgd,
    param_groups,
    poly_lr_lambda,
    warmup_poly_lr_lambda,
)
from wsss.engine.progress import TrainProgress
from wsss.engine.runlog import ScalarWriter, read_scalars, setup_run_logging
from wsss.engine.seeding import (
    capture_rng_state,
    epoch_generator,
    epoch_seed,
    restore_rng_state,
    seed_everything,
    worker_init_fn,
)

__all__ = [
    "AMP_MODES",
    "COMPAT_MODES",
    "DistInfo",
    "LegacyPolySGD",
    "ScalarWriter",
    "TrainProgress",
    "all_reduce_sum",
    "amp_dtype",
    "autocast",
    "barrier",
    "capture_rng_state",
    "destroy",
    "epoch_generator",
    "epoch_seed",
    "export_weights",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main",
    "load_model_state",
    "load_training_state",
    "load_weights",
    "make_grad_scaler",
    "make_poly_scheduler",
    "make_sgd",
    "param_groups",
    "parse_shard",
    "poly_lr_lambda",
    "read_scalars",
    "read_weights",
    "resolve_device",
    "restore_rng_state",
    "save_training_state",
    "seed_everything",
    "setup_run_logging",
    "shard_indices",
    "unwrap",
    "warmup_poly_lr_lambda",
    "worker_init_fn",
    "wrap_ddp",
]
