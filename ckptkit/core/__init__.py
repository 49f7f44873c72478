"""Layer 0, the data model: Checkpoint and its parts, dtypes, errors. Imports nothing of ckptkit."""
