"""A model saved whole (`torch.save(model)`): its state dict is the model, as Module.state_dict() names it.

Such a file said "no model state found", its validate fix turned the module into a dict of its
internals, `convert --weights-only` found nothing to convert, and `repair` stopped with an
internal error.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ckptkit.cli import main
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.formats import open_checkpoint
from ckptkit.validating import validate_path


class Net(torch.nn.Module):
    """A user's own module class: pickled by name, found by its fields like torch's own."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU())
        self.head = torch.nn.Linear(4, 2)
        self.skip = None
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("cache", torch.zeros(5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) * self.scale


def _model() -> Net:
    torch.manual_seed(0)
    net = Net()
    net(torch.randn(6, 3))        # BatchNorm's running stats and num_batches_tracked move
    return net


def test_a_whole_pickled_model_reads_as_its_state_dict(tmp_path: Path) -> None:
    net = _model()
    torch.save(net, tmp_path / "whole.pt")
    ckpt = open_checkpoint(tmp_path / "whole.pt")
    expected = net.state_dict()
    assert [(k, t.shape) for k, t in ckpt.model.items()] == [(k, tuple(v.shape)) for k, v in expected.items()]
    assert "cache" not in ckpt.model                      # a non-persistent buffer is not in state_dict()
    assert ckpt.sources["model"] == f"a pickled {Net.__module__}.Net"


def test_a_model_saved_whole_under_a_key_is_the_model_section(tmp_path: Path) -> None:
    net = _model()
    torch.save({"model": net, "epoch": 3}, tmp_path / "ckpt.pt")
    ckpt = open_checkpoint(tmp_path / "ckpt.pt")
    assert list(ckpt.model) == list(net.state_dict()) and ckpt.sources["model"] == "model"
    assert ckpt.progress.epochs_completed == 3


def test_its_weights_convert_to_the_state_dict_and_the_fix_says_so(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    classes = [f for f in validate_path(path, siblings=False).findings if f.code == "security.pickled-class"]
    assert classes and {f.fix for f in classes} == {f"ckptkit convert {path} {tmp_path / 'whole.safetensors'} "
                                                      "--weights-only"}
    result = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "whole.safetensors"), "--weights-only"])
    assert result.exit_code == 0, result.output
    written = load_file(tmp_path / "whole.safetensors")
    assert list(written) == list(net.state_dict())
    assert all(torch.equal(written[k], v) for k, v in net.state_dict().items())


def test_repair_leaves_a_whole_model_alone_and_points_to_its_weights(tmp_path: Path) -> None:
    for name, obj in (("whole.pt", _model()), ("in_dict.pt", {"model": _model(), "epoch": 1})):
        path = tmp_path / name
        torch.save(obj, path)
        before = path.read_bytes()
        result = CliRunner().invoke(main, ["repair", str(path), "--fix", "security.pickled-class"])
        assert result.exit_code == 0, result.output
        assert "a whole pickled torch.nn module" in result.output and "--weights-only" in result.output
        assert path.read_bytes() == before and not path.with_name(name + ".bak").exists()


def test_a_shared_submodule_is_named_under_each_name_as_state_dict_does(tmp_path: Path) -> None:
    net = torch.nn.Module()
    shared = torch.nn.Linear(2, 2)
    net.a, net.b = shared, shared
    torch.save(net, tmp_path / "tied.pt")
    ckpt = open_checkpoint(tmp_path / "tied.pt")
    assert list(ckpt.model) == list(net.state_dict()) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert ckpt.model["a.weight"] is ckpt.model["b.weight"]


def test_a_module_shared_a_million_ways_is_refused_before_any_walk(tmp_path: Path) -> None:
    """A pickle's memo can share one module under 2**20 names in a few kilobytes; the unpickler's
    tree-size limit refuses it with one line, so the state-dict walk never meets it."""
    node = torch.nn.Linear(1, 1)
    for _ in range(20):
        parent = torch.nn.Module()
        parent.x, parent.y = node, node
        node = parent
    torch.save(node, tmp_path / "dag.pt")
    assert (tmp_path / "dag.pt").stat().st_size < 200_000
    with pytest.raises(CorruptCheckpointError, match="tree-size limit"):
        open_checkpoint(tmp_path / "dag.pt")
