"""The recsys trainer (seed 000's system): a sequential recommender on synthetic interactions.

Commands (from the repository root)::

    python -m trainers.recsys --config tiny --out runs/rs                  # a second on a CPU
    python -m trainers.recsys --config tiny --out runs/rk --kill-at-micro-step 25   # a real crash
    python -m trainers.recsys --resume runs/rk                             # newest valid checkpoint
    python -m trainers.recsys --resume_from_checkpoint runs/rs/checkpoint-recent.pth.final --num_epochs 6

Checkpoints are seed 000's (``checkpoint-recent.pth`` overwritten each epoch, ``best_acc_model.pth``
by validation accuracy, ``checkpoint-recent.pth.final`` at the end; ``epoch`` = index of the
last finished epoch) plus ckptkit's extras; see :mod:`ckptkit.training.recsys_layout`. Ctrl+C
or SIGTERM saves ``checkpoint-recent.pth`` at the exact batch and exits.
"""
