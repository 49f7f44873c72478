"""Seed 003's trainer: a tiny text classifier, ``save_pretrained`` folders plus ``training_state.pth``.

Commands (from the repository root)::

    python -m trainers.pretrained --config tiny --out runs/ptiny             # a second on a CPU
    python -m trainers.pretrained --config tiny --out runs/pk --stop-at-micro-step 20   # interrupt mid-epoch
    python -m trainers.pretrained --resume runs/pk                           # newest valid folder
    python -m trainers.pretrained --resume runs/ptiny --epochs 5             # train a finished run further

Checkpoints are seed 003's folders (``last_checkpoint/``, ``best_model/``: config.json,
model.safetensors, training_state.pth), written atomically with a manifest beside each; see
:mod:`ckptkit.training.pretrained_layout`. The progress line and the resume report are rendered
from the saved data position, never from a loop counter (seed 003's ``initial=resume_step`` bar).
"""
import sys

from trainers.pretrained.cli import main

sys.exit(main())
