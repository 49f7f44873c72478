"""nanoGPT-style dicts (karpathy/nanoGPT ``train.py``): ``model``, ``optimizer``, ``model_args``,
``iter_num``, ``best_val_loss``, ``config``. ``init_from='resume'`` continues at ``iter_num``;
batches are drawn at random, so there is no data position to lose. No epoch counter exists.
"""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction
from ckptkit.families.base import Family, Tree, has
from ckptkit.views import sections as S


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress(global_step=S.as_int(tree.get("iter_num")))
    p.sources["global_step"] = f"key 'iter_num' = {p.global_step}"
    return p


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction:
    return ResumePrediction("nanoGPT", "init_from='resume'", global_step=p.global_step,
                            restores=["model", "optimizer", "iter_num", "best_val_loss"])


NANOGPT = Family("nanogpt", "nanoGPT-style dict (model, optimizer, model_args, iter_num)",
                 has("model_args", "iter_num"), progress, None, (("global_step", "iter_num"),),
                 resume=resume, counter_keys=(("iter_num",),))
