"""The LlamaRec LoRA ranker on Hugging Face ``Trainer``, resuming exactly through ckptkit.

    python -m trainers.ranker --out runs/ranker                 # train (CPU: fp32, CUDA: bf16)
    python -m trainers.ranker --out runs/ranker --stop-at-step 6
    python -m trainers.ranker --resume runs/ranker              # newest verified checkpoint-N
    ckptkit resume runs/ranker                                  # the same, after `ckptkit validate`

A tiny Llama built from a config (random weights) with LoRA on q_proj/v_proj learns to pick the
next item among lettered candidates, with LlamaRec's Trainer arguments (micro-batch and
accumulation, warmup, eval and save every N steps, save_total_limit=3, load_best_model_at_end
on NDCG@5, early stopping) and its own dataloaders. ``ckptkit.integrations.hf.ExactResume`` makes
a resume equal the uninterrupted run bit for bit. Needs ``pip install "ckptkit[hf]"``.
"""
