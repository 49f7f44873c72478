"""The retrieval trainer (seed 001's system): a two-tower recommender on synthetic interactions.

Commands (from the repository root)::

    python -m trainers.retrieval --config tiny --out runs/rtiny            # a second or two on a CPU
    python -m trainers.retrieval --config tiny --out runs/rk --kill-at-micro-step 30   # a real crash
    python -m trainers.retrieval --resume runs/rk                          # newest valid checkpoint
    python -m trainers.retrieval --resume runs/rtiny --epochs 8            # train a finished run further
    python -m trainers.retrieval --batch 64 --epochs 100 --gradient-accumulation 2 --mixed-precision

Checkpoints are seed 001's (``optimized_model_epoch_{E}_recall_{R:.4f}.pt`` at each epoch's end,
``best_optimized_model_recall_{R:.4f}.pt``, ``final_optimized_model_epoch_{E}_recall_{R:.4f}.pt``;
``epoch`` stored as epoch+1) plus ckptkit's extras, with the GradScaler state the seed never
saved; see :mod:`ckptkit.training.retrieval_layout`. Ctrl+C or SIGTERM saves
``interrupted_model_epoch_{E}_batch_{B}.pt`` at the exact batch and exits.
"""
