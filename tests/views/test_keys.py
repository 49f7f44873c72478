"""Wrapper prefixes and matching model keys across them (ckptkit/views/keys.py)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.views.keys import KeyRename, match_keys, module_prefixes, split_known_prefix, strip_known_prefix


def test_nested_wrapper_prefixes_are_all_stripped() -> None:
    assert split_known_prefix("module._orig_mod.fc.weight") == ("module._orig_mod.", "fc.weight")
    assert strip_known_prefix("base_model.model.encoder.q.lora_A.weight") == "encoder.q.lora_A.weight"


def test_a_key_that_is_only_a_prefix_word_is_left_alone() -> None:
    assert split_known_prefix("model.") == ("", "model.")
    assert strip_known_prefix("modelx.weight") == "modelx.weight"


def test_keys_renamed_by_a_ddp_prefix_are_paired_not_missing() -> None:
    match = match_keys(["fc.weight", "fc.bias"], ["module.fc.weight", "module.fc.bias"])
    assert match.pairs == [("fc.weight", "module.fc.weight"), ("fc.bias", "module.fc.bias")]
    assert match.only_a == [] and match.only_b == []
    assert match.rename_summary() == {
        "prefix 'module.' in B only (a DistributedDataParallel/DataParallel wrapper)": 2}


def test_equal_keys_win_over_prefix_matches() -> None:
    match = match_keys(["model.fc.weight", "fc.weight"], ["fc.weight", "model.fc.weight"])
    assert match.pairs == [("model.fc.weight", "model.fc.weight"), ("fc.weight", "fc.weight")]
    assert match.renamed == []


def test_ambiguous_prefix_matches_stay_unpaired() -> None:
    match = match_keys(["module.w", "model.w"], ["_orig_mod.w"])
    assert match.pairs == []
    assert match.only_a == ["module.w", "model.w"]
    assert match.only_b == ["_orig_mod.w"]


def test_renames_are_described_by_the_prefix_that_differs() -> None:
    assert KeyRename("module._orig_mod.w", "_orig_mod.w").describe() == (
        "prefix 'module.' in A only (a DistributedDataParallel/DataParallel wrapper)")
    assert KeyRename("w", "module._orig_mod.w").describe() == "prefix 'module._orig_mod.' in B only"
    assert KeyRename("model.w", "_orig_mod.w").describe() == "prefix 'model.' in A, '_orig_mod.' in B"


def test_modules_go_one_level_deeper_while_everything_shares_a_prefix() -> None:
    names = ["layers.0.weight", "layers.0.bias", "layers.1.weight"]
    assert module_prefixes(names) == {"layers.0.weight": "layers.0", "layers.0.bias": "layers.0",
                                      "layers.1.weight": "layers.1"}
    assert set(module_prefixes(["embed.weight", "head.weight"]).values()) == {"embed", "head"}


def _modules_level_by_level(names: list[str], max_depth: int = 4) -> dict[str, str]:
    """The definition module_prefixes follows (it starts deeper where every name shares a prefix)."""
    depth = 1
    while depth < max_depth:
        prefixes = {".".join(k.split(".")[:depth]) for k in names}
        if len(prefixes) > 1 or all(k.count(".") < depth for k in names):
            break
        depth += 1
    return {k: ".".join(k.split(".")[:depth]) for k in names}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "ab", "", "0", "10"]), min_size=1, max_size=6).map(".".join),
                max_size=5), st.integers(1, 5))
def test_modules_are_the_level_by_level_grouping_for_any_names(names: list[str], max_depth: int) -> None:
    assert module_prefixes(names, max_depth) == _modules_level_by_level(names, max_depth)


def test_many_names_under_one_shared_prefix_group_by_their_first_differing_level() -> None:
    names = [f"model.layers.{i}.experts.{j}.weight" for i in range(3) for j in range(2)]
    assert module_prefixes(names) == {n: ".".join(n.split(".")[:3]) for n in names}
    assert set(module_prefixes(["model.embed.weight"]).values()) == {"model.embed.weight"}
