"""The LM trainer (seed 004's system): a small GPT on built-in synthetic text, on ckptkit.training.

Commands (from the repository root)::

    # a few seconds on a laptop CPU
    python -m trainers.lm --config tiny --out runs/tiny
    # interrupt it for real mid-epoch (SIGKILL after batch 25), then resume exactly where it was
    python -m trainers.lm --config tiny --out runs/tiny-k --kill-at-micro-step 25
    python -m trainers.lm --resume runs/tiny-k             # newest valid checkpoint of the run
    python -m trainers.lm --resume runs/tiny-k/checkpoint_step_20.pt
    # a finished run: continue to 80 steps
    python -m trainers.lm --resume runs/tiny --extend-steps 80
    # seed 004's presets: small, medium (default), large, xlarge, rtx4090
    python -m trainers.lm --config rtx4090 --out runs/4090
    # several GPUs (or CPU ranks on gloo): DDP; with --fsdp, sharded DCP checkpoints
    torchrun --nproc-per-node 2 -m trainers.lm --config tiny --out runs/ddp
    torchrun --nproc-per-node 2 -m trainers.lm --config tiny --out runs/fsdp --fsdp

Checkpoints (``checkpoint_step_{N}.pt``, ``best_model.pt``, ``final_model.pt``, each with a
``.manifest.json``) are plain dicts in seed 004's layout; ``torch.load(path, weights_only=True)``
reads them. Ctrl+C or SIGTERM saves ``checkpoint_step_{N}[_micro_{k}].pt`` at the exact micro-step
and exits; resuming from it continues as if nothing happened (bitwise on CPU).
"""
