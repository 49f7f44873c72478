"""`--against REF`: what load_state_dict would say, and why."""
from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import save_file

from ckptkit.core.checkpoint import Severity
from tests.validation.helpers import codes, only, run, trained_state


def weights(**shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {name.replace("__", "."): torch.zeros(shape) for name, shape in shapes.items()}


def test_ddp_prefix_is_named_as_the_cause_with_its_repair(save: Any, state: dict[str, Any]) -> None:
    ref = save(state["model_state_dict"], "ref.pt")
    wrapped = {f"module.{k}": v for k, v in state["model_state_dict"].items()}
    path = save({"model_state_dict": wrapped, "epoch": 1})
    report = run(path, against=ref)
    finding = only(report, "compat.module-prefix")
    assert "keys here start with 'module.' (saved from a DistributedDataParallel/DataParallel wrapper)" \
        in finding.message
    assert finding.fix.endswith("ckpt.pt --fix compat.module-prefix")
    assert not codes(report) & {"compat.missing-keys", "compat.unexpected-keys"}


def test_ddp_prefix_without_a_reference_is_information(save: Any, state: dict[str, Any]) -> None:
    wrapped = {f"module.{k}": v for k, v in state["model_state_dict"].items()}
    finding = only(run(save({"model_state_dict": wrapped, "epoch": 1})), "compat.module-prefix")
    assert finding.severity is Severity.INFO
    assert finding.message.startswith("all 4 keys start with 'module.'")


def test_compile_lightning_and_peft_prefixes(save: Any) -> None:
    ref = save(weights(encoder__weight=(4, 4), head__weight=(2, 4)), "ref.pt")
    for prefix, code in (("_orig_mod.", "compat.compile-prefix"), ("model.", "compat.lightning-prefix"),
                         ("base_model.model.", "compat.peft-prefix")):
        path = save({f"{prefix}encoder.weight": torch.zeros(4, 4), f"{prefix}head.weight": torch.zeros(2, 4)})
        assert f"keys here start with '{prefix}'" in only(run(path, against=ref), code).message


def test_prefix_on_the_reference_side(save: Any) -> None:
    ref = save({"module.fc.weight": torch.zeros(2, 2)}, "ref.pt")
    finding = only(run(save({"fc.weight": torch.zeros(2, 2)}), against=ref), "compat.module-prefix")
    assert "the reference ref.pt's keys start with 'module.'" in finding.message
    assert finding.fix.endswith("ref.pt --fix compat.module-prefix")


def test_seed_000_size_mismatch_against_a_reference_model(save: Any, samples: Any) -> None:
    ref = save(trained_state(hidden=32)["model_state_dict"], "ref.pt")
    report = run(samples["checkpoint-recent.pth"], against=ref)
    finding = [f for f in report.findings if f.code == "compat.shape-mismatch"][0]
    assert finding.where == "checkpoint-recent.pth: 0.weight"
    assert finding.message == ("size mismatch for 0.weight: copying a param with shape [16, 8] from this "
                               "checkpoint, the shape in the reference model is [32, 8]")
    assert "compat.optimizer-param-set" in codes(report)


def test_a_resized_vocabulary(save: Any) -> None:
    ref = save(weights(embed_tokens__weight=(104, 8), proj__weight=(8, 8)), "ref.pt")
    path = save(weights(embed_tokens__weight=(100, 8), proj__weight=(8, 8)))
    finding = only(run(path, against=ref), "compat.resized-vocab")
    assert "vocabulary resized, 100 rows here vs 104 in the reference" in finding.message
    assert "model.resize_token_embeddings(100)" in finding.message


def test_tied_lm_head_left_out(save: Any, tmp_path: Any) -> None:
    ref = save(weights(transformer__wte__weight=(50, 8), lm_head__weight=(50, 8)), "ref.pt")
    save_file(weights(transformer__wte__weight=(50, 8)), str(tmp_path / "tied.safetensors"))
    report = run(tmp_path / "tied.safetensors", against=ref)
    assert "it is tied to 'transformer.wte.weight'" in only(report, "compat.tied-weights").message
    assert "compat.missing-keys" not in codes(report)


def test_missing_and_unexpected_keys(save: Any) -> None:
    ref = save(weights(a__weight=(2,), b__weight=(2,)), "ref.pt")
    report = run(save(weights(a__weight=(2,), c__weight=(2,))), against=ref)
    assert only(report, "compat.missing-keys").message == "1 key of ref.pt is missing here: b.weight"
    assert only(report, "compat.unexpected-keys").message == "1 key here is unexpected by ref.pt: c.weight"


def test_optimizer_built_for_another_parameter_set_than_the_reference(save: Any, state: dict[str, Any]) -> None:
    ref = save(trained_state(hidden=32)["model_state_dict"], "ref.pt")
    other = trained_state(hidden=32)
    path = save({"model_state_dict": other["model_state_dict"], "optimizer_state_dict": state["optimizer_state_dict"],
                 "epoch": 1})
    finding = only(run(path, against=ref), "compat.optimizer-param-set")
    # The count fits (4 for 4); a shape does not: "expected at most 4, found 4" misled.
    assert ("4 entries for the 4 parameters of the reference ref.pt, but optimizer entry 0 (id 0, group 0) has "
            "state of shape [16, 8], which no remaining parameter of the reference ref.pt has") in finding.message


def test_a_matching_reference_gives_no_compat_findings(save: Any, state: dict[str, Any], samples: Any) -> None:
    ref = save(state["model_state_dict"], "ref.pt")
    report = run(save({**state, "epoch": 1}), against=ref)
    assert not [c for c in codes(report) if c.startswith("compat.")]
