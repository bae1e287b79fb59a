"""Stage ``pretrain-cls``: train the recipe's ``pretrain`` classifier, the first of two.

A two-stage method trains one classifier, then a second that builds on it (AMR: the spotlight
branch, a plain CAM with Cutout, then the dual-branch AMR model whose spotlight is loaded from it
and frozen). This stage is ``train-cls``'s code on the ``pretrain`` section, written to
``RUN/pretrain-cls/``; ``classifier.init_from: pretrain`` makes ``train-cls`` read it.
"""

from __future__ import annotations

from typing import Any

from wsss.stages.context import StageContext
from wsss.stages.train_cls import PRETRAIN, train_classifier

NAME = "pretrain-cls"


def is_complete(ctx: StageContext) -> bool:
    return ctx.paths.pretrain_weights.is_file()


def run(ctx: StageContext) -> dict[str, Any]:
    return train_classifier(
        ctx,
        section=PRETRAIN,
        name=NAME,
        state_path=ctx.paths.pretrain_state,
        weights_path=ctx.paths.pretrain_weights,
    )
