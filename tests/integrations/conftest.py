import pytest
import torch

# Two shared CPU cores: more intra-op threads only spin against each other on these tiny tensors.
torch.set_num_threads(1)

pytest.importorskip("transformers", reason="the hf extra: pip install 'ckptkit[hf]' (CI installs it with [test])")
pytest.importorskip("peft")
