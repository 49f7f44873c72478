"""Seed 003's trainer: a tiny text classifier saving ``save_pretrained`` folders with a training state."""
