"""ckptkit.conversion: round trips are equal, outputs load with the standard loaders, casts are exact."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

from ckptkit.conversion import ConvertOptions, convert_checkpoint, shard_names
from ckptkit.conversion.plan import plan_tensors
from ckptkit.core.errors import CkptkitError, UnsupportedFeatureError
from ckptkit.formats import open_checkpoint

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool]


def _random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -(2 ** 40)), min(info.max, 2 ** 40), shape, generator=g, dtype=dtype)


# One entry of a state dict: a fresh tensor, or a tie / transpose / slice of an earlier one.
_entry = st.tuples(st.sampled_from(["new", "new", "tie", "transpose", "slice"]), st.sampled_from(DTYPES),
                   st.lists(st.integers(0, 4), min_size=0, max_size=3), st.integers(0, 2 ** 31))


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for i, (kind, dtype, shape, seed) in enumerate(draw(st.lists(_entry, min_size=1, max_size=8))):
        earlier = [t for t in sd.values() if t.dim() == 2 and t.numel() > 0]
        if kind == "tie" and sd:
            sd[f"tied.{i}"] = list(sd.values())[seed % len(sd)]
        elif kind == "transpose" and earlier:
            sd[f"layer{i}.weight_t"] = earlier[seed % len(earlier)].t()
        elif kind == "slice" and earlier:
            sd[f"layer{i}.rows"] = earlier[seed % len(earlier)][1:]
        else:
            sd[f"layer{i}.weight"] = _random_tensor(dtype, tuple(shape), seed)
    return sd


def _assert_same_state_dict(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype, name
        assert torch.equal(got[name], t), name


def _tied_pairs(sd: dict[str, torch.Tensor]) -> set[tuple[str, str]]:
    """Names that are the very same tensor (same storage, offset, shape, stride)."""
    names = list(sd)
    return {(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if sd[a].numel() and sd[a].untyped_storage().data_ptr() == sd[b].untyped_storage().data_ptr()
            and sd[a].storage_offset() == sd[b].storage_offset() and sd[a].shape == sd[b].shape
            and sd[a].stride() == sd[b].stride()}


_HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_HYPOTHESIS
@given(sd=state_dicts())
def test_pth_to_safetensors_to_pth_gives_back_equal_tensors_and_ties(tmp_path_factory: pytest.TempPathFactory,
                                                                     sd: dict[str, torch.Tensor]) -> None:
    d = tmp_path_factory.mktemp("rt")
    torch.save(sd, d / "a.pth")
    convert_checkpoint(d / "a.pth", d / "b.safetensors")
    convert_checkpoint(d / "b.safetensors", d / "c.pth")

    tied = _tied_pairs(sd)
    from_st = load_file(d / "b.safetensors")
    assert set(from_st) == set(sd) - {b for _, b in tied}
    _assert_same_state_dict({k: v for k, v in from_st.items()}, {k: sd[k] for k in from_st})
    back = torch.load(d / "c.pth", weights_only=True)
    _assert_same_state_dict(back, sd)
    assert tied <= _tied_pairs(back)


@_HYPOTHESIS
@given(sd=state_dicts())
def test_legacy_to_zip_keeps_the_tree_the_sharing_and_every_storage_record_byte_for_byte(
        tmp_path_factory: pytest.TempPathFactory, sd: dict[str, torch.Tensor]) -> None:
    d = tmp_path_factory.mktemp("legacy")
    torch.save({"model": sd, "epoch": 3, "note": ("a", 1.5)}, d / "old.pt", _use_new_zipfile_serialization=False)
    convert_checkpoint(d / "old.pt", d / "new.pt")

    back = torch.load(d / "new.pt", weights_only=True)
    assert back["epoch"] == 3 and back["note"] == ("a", 1.5)
    _assert_same_state_dict(back["model"], sd)
    same_storage = lambda m: {(a, b) for a in m for b in m if a < b and m[a].numel() and m[b].numel()  # noqa: E731
                              and m[a].untyped_storage().data_ptr() == m[b].untyped_storage().data_ptr()}
    assert same_storage(back["model"]) == same_storage(sd)
    old, new = open_checkpoint(d / "old.pt"), open_checkpoint(d / "new.pt")
    assert new.format == "torch-zip"
    old_records = {t.storage.key: bytes(t.storage.read_bytes()) for _, t in old.tensors()}
    new_records = {t.storage.key: bytes(t.storage.read_bytes()) for _, t in new.tensors()}
    assert new_records == old_records


def _training_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    sd = model.state_dict()
    torch.save({"model_state_dict": sd, "optimizer_state_dict": opt.state_dict(), "epoch": 4,
                "config": {"lr": 1e-3, "layers": [6, 5, 3]}, "best_acc": 0.75}, path)
    return sd


def test_training_state_is_refused_by_safetensors_unless_weights_only_and_nothing_is_written(tmp_path: Path) -> None:
    _training_checkpoint(tmp_path / "ckpt.pth")
    with pytest.raises(UnsupportedFeatureError,
                       match=r"optimizer \(optimizer_state_dict\) would be lost.*--weights-only"):
        convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_safetensors_metadata_keeps_progress_config_metrics_and_source_format(tmp_path: Path) -> None:
    sd = _training_checkpoint(tmp_path / "ckpt.pth")
    result = convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "m.safetensors", ConvertOptions(weights_only=True))
    assert result.dropped == ["optimizer (optimizer_state_dict)"]
    with safe_open(tmp_path / "m.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert meta["ckptkit.source_format"] == "torch-zip"
    progress = json.loads(meta["ckptkit.progress"])
    assert progress["epochs_completed"] == 4 and progress["summary"] == "4 epochs completed (boundary unknown)"
    assert json.loads(meta["ckptkit.config"]) == {"lr": 1e-3, "layers": [6, 5, 3]}
    assert json.loads(meta["ckptkit.metrics"]) == {"best_acc": 0.75}
    _assert_same_state_dict(load_file(tmp_path / "m.safetensors"), sd)


@pytest.mark.parametrize("spelling,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_casts_floating_weights_exactly_as_torch_does_and_leaves_integers(
        tmp_path: Path, spelling: str, dtype: torch.dtype) -> None:
    w = torch.randn(7, 9, dtype=torch.float32)
    sd = {"w": w, "w_t": w.t(), "count": torch.arange(5), "mask": torch.tensor([True, False])}
    torch.save(sd, tmp_path / "a.pth")
    result = convert_checkpoint(tmp_path / "a.pth", tmp_path / "a.safetensors", ConvertOptions(dtype=spelling))
    assert result.cast_tensors == 2 and result.cast_to == str(dtype).removeprefix("torch.")
    got = load_file(tmp_path / "a.safetensors")
    assert got["w"].dtype == dtype and torch.equal(got["w"], w.to(dtype))
    assert torch.equal(got["w_t"], w.t().to(dtype))
    assert got["count"].dtype == torch.int64 and torch.equal(got["count"], sd["count"])
    convert_checkpoint(tmp_path / "a.pth", tmp_path / "b.pth", ConvertOptions(dtype=spelling))
    back = torch.load(tmp_path / "b.pth", weights_only=True)
    assert torch.equal(back["w_t"], w.t().to(dtype)) and back["w_t"].stride() == (1, 9)
    assert back["w"].untyped_storage().data_ptr() == back["w_t"].untyped_storage().data_ptr()


def test_dtype_on_a_training_checkpoint_casts_the_model_and_keeps_the_optimizer_precision(tmp_path: Path) -> None:
    sd = _training_checkpoint(tmp_path / "ckpt.pth")
    convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "half.pth", ConvertOptions(dtype="bf16"))
    back = torch.load(tmp_path / "half.pth", weights_only=True)
    _assert_same_state_dict(back["model_state_dict"], {k: v.bfloat16() for k, v in sd.items()})
    assert back["optimizer_state_dict"]["state"][0]["exp_avg"].dtype == torch.float32
    assert back["epoch"] == 4


def test_sharded_output_follows_the_hf_index_convention_and_every_shard_loads(tmp_path: Path) -> None:
    sd = {f"layers.{i}.weight": torch.randn(10, 10) for i in range(5)}   # 400 bytes each
    torch.save(sd, tmp_path / "a.pth")
    result = convert_checkpoint(tmp_path / "a.pth", tmp_path / "out", ConvertOptions(max_shard_size=900))
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": 2000}
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert index["weight_map"]["layers.4.weight"] == "model-00003-of-00003.safetensors"
    loaded: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        loaded.update(load_file(tmp_path / "out" / shard))
    _assert_same_state_dict(loaded, sd)
    assert result.verified_tensors == 5 and len(result.files) == 4


def test_a_tensor_larger_than_the_shard_size_gets_a_shard_of_its_own(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(2), "big": torch.zeros(100), "c": torch.zeros(2)}, tmp_path / "a.pth")
    plan = plan_tensors(__import__("collections").OrderedDict(open_checkpoint(tmp_path / "a.pth").model), None)
    assert shard_names(plan, 50) == [["a"], ["big"], ["c"]]


def test_select_keeps_only_the_tensors_under_the_prefix(tmp_path: Path) -> None:
    sd = _training_checkpoint(tmp_path / "ckpt.pth")
    convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "head.pth", ConvertOptions(select="2."))
    back = torch.load(tmp_path / "head.pth", weights_only=True)
    _assert_same_state_dict(back, {"2.weight": sd["2.weight"], "2.bias": sd["2.bias"]})
    with pytest.raises(UnsupportedFeatureError, match=r"--select 'decoder\.' matches no model tensor .*0, 2"):
        convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "x.pth", ConvertOptions(select="decoder."))


def test_an_existing_output_is_kept_unless_force_and_then_backed_up(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "a.pth")
    (tmp_path / "a.safetensors").write_bytes(b"old bytes")
    with pytest.raises(CkptkitError, match="already exists; pass --force"):
        convert_checkpoint(tmp_path / "a.pth", tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == b"old bytes"
    result = convert_checkpoint(tmp_path / "a.pth", tmp_path / "a.safetensors", ConvertOptions(force=True))
    assert result.backup == tmp_path / "a.safetensors.bak"
    assert (tmp_path / "a.safetensors.bak").read_bytes() == b"old bytes"
    assert torch.equal(load_file(tmp_path / "a.safetensors")["w"], torch.ones(3))


def test_every_seed_sample_converts_to_safetensors_and_back_with_equal_weights(tmp_path: Path) -> None:
    from scripts.make_seed_samples import write_samples

    for name, path in write_samples(tmp_path / "samples").items():
        ckpt = open_checkpoint(path)
        if not ckpt.model:
            continue
        st_path, back_path = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.pth"
        convert_checkpoint(path, st_path, ConvertOptions(weights_only=True))
        convert_checkpoint(st_path, back_path)
        want = {n: t.to_torch() for n, t in ckpt.model.items()}
        back = torch.load(back_path, weights_only=True)
        model_key = ckpt.sources["model"]
        _assert_same_state_dict(back if model_key == "(top level)" else back[model_key], want)


FIXTURES = Path(__file__).parent / "fixtures" / "real"


def test_a_real_hf_trainer_safetensors_converts_to_pth_and_back_unchanged(tmp_path: Path) -> None:
    source = FIXTURES / "hf_full" / "checkpoint-10" / "model.safetensors"
    convert_checkpoint(source, tmp_path / "model.pth")
    convert_checkpoint(tmp_path / "model.pth", tmp_path / "again.safetensors")
    want = load_file(source)
    _assert_same_state_dict(torch.load(tmp_path / "model.pth", weights_only=True), want)
    _assert_same_state_dict(load_file(tmp_path / "again.safetensors"), want)


def test_a_tied_gpt2_state_dict_sharded_by_ckptkit_loads_with_from_pretrained(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=32, vocab_size=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    torch.save(sd, tmp_path / "gpt2.pth")

    result = convert_checkpoint(tmp_path / "gpt2.pth", tmp_path / "release", ConvertOptions(max_shard_size=8000))
    assert result.aliases == {"lm_head.weight": "transformer.wte.weight"}
    index = json.loads((tmp_path / "release" / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"] and len(set(index["weight_map"].values())) > 1
    config.save_pretrained(tmp_path / "release")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "release")
    _assert_same_state_dict(loaded.state_dict(), sd)


def _same_tree(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("folder", ["dcp_two_ranks", "real/dcp"])
def test_a_dcp_folder_becomes_the_torch_save_file_torchs_own_dcp_to_torch_save_writes(
        tmp_path: Path, folder: str) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    source = Path(__file__).parent / "fixtures" / folder
    result = convert_checkpoint(source, tmp_path / "ours.pth")
    dcp_to_torch_save(source, tmp_path / "torch.pth")
    assert result.source_format == "dcp"
    ours = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert _same_tree(ours, torch.load(tmp_path / "torch.pth", weights_only=True))


def test_a_row_sharded_dcp_tensor_is_assembled_whole_in_safetensors(tmp_path: Path) -> None:
    source = Path(__file__).parent / "fixtures" / "dcp_two_ranks"
    assert len(open_checkpoint(source).chunks["model.w"]) == 2
    convert_checkpoint(source, tmp_path / "m.safetensors", ConvertOptions(weights_only=True))
    assert torch.equal(load_file(tmp_path / "m.safetensors")["w"], torch.arange(24.0).reshape(6, 4))


def _assert_rng_state_is_the_folders_with_plain_lists(rng: dict[str, object], folder: Path) -> None:
    """The RNG state as HF Trainer's rng_state.pth holds it, numpy's keys as a plain list that
    np.random.set_state accepts (and that torch.load(weights_only=True) reads)."""
    import random

    import numpy as np

    original = open_checkpoint(folder).rng
    kind, keys, pos, has_gauss, cached = rng["numpy"]  # type: ignore[misc]
    assert (kind, keys, pos, has_gauss, cached) == (original["numpy"][0], original["numpy"][1].tolist(),
                                                     *original["numpy"][2:])
    assert len(keys) == 624 and all(isinstance(k, int) for k in keys)
    assert torch.equal(rng["cpu"], original["cpu"].to_torch())  # type: ignore[arg-type]
    saved_np, saved_py, saved_torch = np.random.get_state(), random.getstate(), torch.get_rng_state()
    try:   # what transformers' Trainer._load_rng_state does with the file
        random.setstate(rng["python"])  # type: ignore[arg-type]
        np.random.set_state(rng["numpy"])  # type: ignore[arg-type]
        torch.random.set_rng_state(rng["cpu"])  # type: ignore[arg-type]
        assert np.random.get_state()[1].tolist() == keys and random.getstate() == rng["python"]
    finally:
        np.random.set_state(saved_np)
        random.setstate(saved_py)
        torch.set_rng_state(saved_torch)


def test_an_hf_trainer_folder_packs_into_one_torch_file_with_its_sections_and_says_what_it_left_out(
        tmp_path: Path) -> None:
    source = FIXTURES / "hf_full" / "checkpoint-10"
    result = convert_checkpoint(source, tmp_path / "packed.pth")
    assert result.source_format == "hf-trainer"
    assert result.dropped == []
    packed = torch.load(tmp_path / "packed.pth", weights_only=True)
    assert list(packed) == ["model", "optimizer", "scheduler", "rng_state", "config", "progress", "metrics",
                            "histories", "extra", "config.json", "generation_config.json", "trainer_state.json",
                            "global_step", "epoch"]
    _assert_rng_state_is_the_folders_with_plain_lists(packed["rng_state"], source)
    assert packed["trainer_state.json"] == json.loads((source / "trainer_state.json").read_text())
    _assert_same_state_dict(packed["model"], load_file(source / "model.safetensors"))
    assert _same_tree(packed["optimizer"], torch.load(source / "optimizer.pt", weights_only=True))
    assert _same_tree(packed["scheduler"], torch.load(source / "scheduler.pt", weights_only=True))
    assert packed["global_step"] == 10 and packed["progress"]["training_finished"] is True
    assert packed["config"]["max_steps"] == -1 and "learning_rate" in packed["config"]   # TrainingArguments fields
    assert open_checkpoint(tmp_path / "packed.pth").progress.global_step == 10


def test_an_hf_folder_weights_only_becomes_a_bare_state_dict_and_a_sharded_one_too(tmp_path: Path) -> None:
    convert_checkpoint(FIXTURES / "hf_full" / "checkpoint-10", tmp_path / "w.pth", ConvertOptions(weights_only=True))
    convert_checkpoint(FIXTURES / "hf_sharded", tmp_path / "s.pth")
    want = load_file(FIXTURES / "hf_full" / "checkpoint-10" / "model.safetensors")
    _assert_same_state_dict(torch.load(tmp_path / "w.pth", weights_only=True), want)
    sharded = {}
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        sharded.update(load_file(FIXTURES / "hf_sharded" / shard))
    _assert_same_state_dict(torch.load(tmp_path / "s.pth", weights_only=True), sharded)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sd=state_dicts())
def test_ckptkit_diff_reports_every_round_trip_as_equal(tmp_path_factory: pytest.TempPathFactory,
                                                        sd: dict[str, torch.Tensor]) -> None:
    from ckptkit.diffing import diff_paths

    d = tmp_path_factory.mktemp("diff")
    torch.save(sd, d / "a.pth")
    torch.save(sd, d / "legacy.pt", _use_new_zipfile_serialization=False)
    convert_checkpoint(d / "a.pth", d / "b.safetensors")
    convert_checkpoint(d / "b.safetensors", d / "c.pth")
    convert_checkpoint(d / "legacy.pt", d / "zip.pt")
    for a, b in (("a.pth", "c.pth"), ("legacy.pt", "zip.pt")):
        result = diff_paths(d / a, d / b)
        assert result.equal, (a, b, result.to_json()["changes"])


def test_ckptkit_diff_on_the_command_line_says_a_pth_and_its_safetensors_are_equal(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ckptkit.cli import main

    _training_checkpoint(tmp_path / "ckpt.pth")
    convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "m.safetensors", ConvertOptions(weights_only=True))
    result = CliRunner().invoke(main, ["diff", str(tmp_path / "ckpt.pth"), str(tmp_path / "m.safetensors"),
                                       "--only", "model"])
    assert result.exit_code == 0, result.output


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sd=state_dicts())
def test_pth_to_dcp_to_pth_gives_back_equal_tensors_and_dcp_load_reads_the_folder(
        tmp_path_factory: pytest.TempPathFactory, sd: dict[str, torch.Tensor]) -> None:
    import torch.distributed.checkpoint as dcp

    d = tmp_path_factory.mktemp("dcp")
    torch.save({"model": sd, "step": 3}, d / "a.pth")
    convert_checkpoint(d / "a.pth", d / "folder", ConvertOptions(to="dcp"))
    convert_checkpoint(d / "folder", d / "back.pth")
    back = torch.load(d / "back.pth", weights_only=True)
    assert back["step"] == 3
    _assert_same_state_dict(back["model"], sd)
    template = {"model": {k: torch.zeros_like(v) for k, v in sd.items()}, "step": 0}
    dcp.load(template, storage_reader=dcp.FileSystemReader(str(d / "folder")), no_dist=True)
    _assert_same_state_dict(template["model"], sd)


def test_dcp_to_pth_to_dcp_gives_what_torch_reads_from_the_original(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    source = Path(__file__).parent / "fixtures" / "dcp_two_ranks"
    convert_checkpoint(source, tmp_path / "one.pth")
    result = convert_checkpoint(tmp_path / "one.pth", tmp_path / "again", ConvertOptions(to="dcp"))
    assert result.target_format == "dcp" and (tmp_path / "again" / ".metadata").is_file()
    dcp_to_torch_save(source, tmp_path / "a.pth")
    dcp_to_torch_save(tmp_path / "again", tmp_path / "b.pth")
    assert _same_tree(torch.load(tmp_path / "a.pth", weights_only=True),
                      torch.load(tmp_path / "b.pth", weights_only=True))


def test_an_hf_trainer_folder_packed_then_unpacked_is_the_same_checkpoint_and_loads_with_from_pretrained(
        tmp_path: Path) -> None:
    from ckptkit.diffing import diff_paths
    from ckptkit.diffing.report import DiffOptions

    transformers = pytest.importorskip("transformers")
    source = FIXTURES / "hf_full" / "checkpoint-10"
    convert_checkpoint(source, tmp_path / "packed.pth")
    result = convert_checkpoint(tmp_path / "packed.pth", tmp_path / "checkpoint-10", ConvertOptions(to="hf"))
    assert sorted(p.name for p in result.files) == ["config.json", "generation_config.json", "model.safetensors",
                                                      "optimizer.pt", "rng_state.pth", "scheduler.pt",
                                                      "trainer_state.json"]
    # What packing derived from the folder (progress, counters, ...) lives on in trainer_state.json,
    # but has no file of its own.
    assert result.dropped == ["other keys (config, progress, metrics, histories, extra, global_step, epoch): "
                              "an HF folder has no file for them"]
    _assert_rng_state_is_the_folders_with_plain_lists(torch.load(tmp_path / "checkpoint-10" / "rng_state.pth",
                                                                 weights_only=True), source)
    unpacked = open_checkpoint(tmp_path / "checkpoint-10")
    assert unpacked.format == "hf-trainer" and unpacked.progress.global_step == 10
    same = diff_paths(source, tmp_path / "checkpoint-10", DiffOptions(sections=("model", "optimizer", "scheduler")))
    assert same.equal
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-10")
    _assert_same_state_dict({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"},
                            load_file(source / "model.safetensors"))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_a_dcp_folder_whose_plain_values_differ_from_the_source_fails_verification(tmp_path: Path) -> None:
    from ckptkit.conversion.to_dcp import verify_dcp
    from ckptkit.core.errors import WriteVerificationError

    torch.save({"model": {"w": torch.ones(2)}, "step": 3}, tmp_path / "a.pth")
    convert_checkpoint(tmp_path / "a.pth", tmp_path / "d", ConvertOptions(to="dcp"))
    tree = open_checkpoint(tmp_path / "a.pth").tree
    assert verify_dcp(tmp_path / "d", tmp_path / "d", tree) == 1
    with pytest.raises(WriteVerificationError, match=r"plain values read back differ .*'step'"):
        verify_dcp(tmp_path / "d", tmp_path / "d", {**tree, "step": 4})


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_dtype_to_dcp_casts_the_model_exactly_as_torch_does_and_keeps_optimizer_moments_and_ties(
        tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    w, moment = torch.randn(6, 5, dtype=torch.float32), torch.rand(6, 5, dtype=torch.float32)
    torch.save({"model": {"w": w, "tied": w, "count": torch.arange(3)},
                "optimizer": {"state": {0: {"exp_avg": moment}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                "step": 7}, tmp_path / "a.pth")
    result = convert_checkpoint(tmp_path / "a.pth", tmp_path / "folder", ConvertOptions(to="dcp", dtype="bf16"))
    assert (result.cast_to, result.cast_tensors, result.verified_tensors) == ("bfloat16", 2, 4)
    template = {"model": {"w": torch.zeros(6, 5, dtype=torch.bfloat16), "tied": torch.zeros(6, 5, dtype=torch.bfloat16),
                          "count": torch.zeros(3, dtype=torch.int64)},
                "optimizer": {"state": {0: {"exp_avg": torch.zeros(6, 5)}},
                              "param_groups": [{"lr": 0.0, "params": [0]}]},
                "step": 0}
    dcp.load(template, storage_reader=dcp.FileSystemReader(str(tmp_path / "folder")), no_dist=True)
    assert torch.equal(template["model"]["w"], w.to(torch.bfloat16))
    assert torch.equal(template["model"]["tied"], w.to(torch.bfloat16))
    assert torch.equal(template["model"]["count"], torch.arange(3))
    assert template["optimizer"]["state"][0]["exp_avg"].dtype == torch.float32
    assert torch.equal(template["optimizer"]["state"][0]["exp_avg"], moment)
    assert template["step"] == 7


PROGRESS_FIELDS = ("epochs_completed", "step_in_epoch", "steps_per_epoch", "global_step", "epoch_complete",
                   "max_steps")


def _progress_values(ckpt: object) -> tuple[object, ...]:
    return tuple(getattr(ckpt.progress, f) for f in PROGRESS_FIELDS)  # type: ignore[attr-defined]


def test_pth_to_weights_only_safetensors_and_back_keeps_each_seed_layouts_progress_config_and_metrics(
        tmp_path: Path) -> None:
    from scripts.make_seed_samples import write_samples

    samples = write_samples(tmp_path / "samples")
    for name in ("checkpoint-recent.pth", "retrieval", "checkpoint_step_1000.pt", "legacy"):
        source = open_checkpoint(samples[name])
        convert_checkpoint(samples[name], tmp_path / f"{name}.safetensors", ConvertOptions(weights_only=True))
        result = convert_checkpoint(tmp_path / f"{name}.safetensors", tmp_path / f"{name}.pth")
        back = open_checkpoint(tmp_path / f"{name}.pth")
        assert (back.family, _progress_values(back)) == (source.family, _progress_values(source)), name
        assert back.metrics == source.metrics and back.config == source.config, name
        assert result.notes[0].startswith("restored from the safetensors __metadata__"), name
        plain = torch.load(tmp_path / f"{name}.pth", weights_only=True)
        assert sorted(plain) == sorted(k for k in source.tree if k not in ("optimizer_state_dict",
                                       "scheduler_state_dict", "train_history", "val_history", "train_losses",
                                       "val_recalls")), name
    experiment = torch.load(tmp_path / "checkpoint_step_1000.pt.pth", weights_only=True)
    assert (experiment["global_step"], experiment["epoch"], experiment["best_val_loss"]) == (1000, 0, 0.3961)
    assert experiment["config"] == {"d_model": 32, "n_layers": 2, "batch_size": 4, "max_steps": 2000,
                                    "save_interval": 500}
    assert torch.load(tmp_path / "retrieval.pth", weights_only=True)["epoch"] == 10


def test_a_mid_epoch_training_state_survives_the_round_trip_through_safetensors_as_its_own_counters(
        tmp_path: Path) -> None:
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "epoch": 2, "step": 300, "total_batches": 1270, "best_val_f1": 0.61}, tmp_path / "a.pth")
    convert_checkpoint(tmp_path / "a.pth", tmp_path / "a.safetensors", ConvertOptions(weights_only=True))
    convert_checkpoint(tmp_path / "a.safetensors", tmp_path / "b.pth")
    back = open_checkpoint(tmp_path / "b.pth")
    assert back.family == "training-state"
    assert (back.progress.epochs_completed, back.progress.step_in_epoch, back.progress.steps_per_epoch,
            back.progress.epoch_complete) == (1, 300, 1270, False)
    plain = torch.load(tmp_path / "b.pth", weights_only=True)
    assert (plain["epoch"], plain["step"], plain["total_batches"], plain["best_val_f1"]) == (2, 300, 1270, 0.61)


def test_progress_the_layouts_counters_cannot_say_is_kept_whole_under_a_documented_key(tmp_path: Path) -> None:
    from ckptkit.conversion.restore import PROGRESS_KEY

    # An experiment layout with a data position mid-epoch: the position's dict is not kept in
    # safetensors, and the bare 'epoch' key cannot say "300 batches into epoch 3".
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "global_step": 900, "epoch": 2, "best_val_loss": 0.5,
                "data_position": {"epoch": 2, "batch_in_epoch": 300, "steps_per_epoch": 400}}, tmp_path / "a.pt")
    source = open_checkpoint(tmp_path / "a.pt")
    convert_checkpoint(tmp_path / "a.pt", tmp_path / "a.safetensors", ConvertOptions(weights_only=True))
    result = convert_checkpoint(tmp_path / "a.safetensors", tmp_path / "b.pt")
    plain = torch.load(tmp_path / "b.pt", weights_only=True)
    assert plain[PROGRESS_KEY]["epochs_completed"] == 2 and plain[PROGRESS_KEY]["step_in_epoch"] == 300
    assert plain[PROGRESS_KEY]["global_step"] == 900 and plain["best_val_loss"] == 0.5
    assert plain[PROGRESS_KEY] == json.loads(json.dumps(source.progress.to_json()))
    assert f"progress under '{PROGRESS_KEY}' (the experiment layout's counters cannot say" in result.notes[0]


def test_safetensors_to_pth_with_weights_only_stays_a_bare_state_dict_and_says_the_metadata_is_left(
        tmp_path: Path) -> None:
    sd = _training_checkpoint(tmp_path / "ckpt.pth")
    convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "m.safetensors", ConvertOptions(weights_only=True))
    result = convert_checkpoint(tmp_path / "m.safetensors", tmp_path / "m.pth", ConvertOptions(weights_only=True))
    _assert_same_state_dict(torch.load(tmp_path / "m.pth", weights_only=True), sd)
    assert "__metadata__ is not carried over" in result.notes[0]
    result = convert_checkpoint(tmp_path / "m.safetensors", tmp_path / "full.pth")
    full = torch.load(tmp_path / "full.pth", weights_only=True)
    assert (full["epoch"], full["config"], full["best_acc"]) == (4, {"lr": 1e-3, "layers": [6, 5, 3]}, 0.75)
    _assert_same_state_dict(full["model_state_dict"], sd)


def test_to_hf_writes_the_rng_state_with_numpy_keys_as_a_plain_list_and_drops_what_cannot_be_plain(
        tmp_path: Path) -> None:
    import pickle

    import numpy as np

    keys = np.arange(624, dtype=np.uint32) * 7
    rng = {"python": (3, tuple(range(625)), None), "numpy": ("MT19937", keys, 5, 0, 0.0),
           "cpu": torch.arange(8, dtype=torch.uint8)}
    sd = {"w": torch.ones(2)}
    # torch.save pickles numpy arrays as they are (weights_only=True would refuse to read them back)
    torch.save({"model": sd, "rng_state": rng, "step": 3}, tmp_path / "a.pth", pickle_module=pickle)
    result = convert_checkpoint(tmp_path / "a.pth", tmp_path / "hf", ConvertOptions(to="hf"))
    assert sorted(p.name for p in result.files) == ["model.safetensors", "rng_state.pth", "trainer_state.json"]
    written = torch.load(tmp_path / "hf" / "rng_state.pth", weights_only=True)
    assert written["numpy"] == ("MT19937", keys.tolist(), 5, 0, 0.0)
    assert written["python"] == rng["python"] and torch.equal(written["cpu"], rng["cpu"])
    assert open_checkpoint(tmp_path / "hf").sources["rng"] == "rng_state.pth"

    rng["numpy"] = ("MT19937", keys.reshape(24, 26), 5, 0, 0.0)   # no plain list without its memory order
    torch.save({"model": sd, "rng_state": rng, "step": 3}, tmp_path / "b.pth", pickle_module=pickle)
    result = convert_checkpoint(tmp_path / "b.pth", tmp_path / "hf2", ConvertOptions(to="hf"))
    assert sorted(p.name for p in result.files) == ["model.safetensors", "trainer_state.json"]
    assert ("rng (rng_state): rng_state.pth: holds numpy arrays, which ckptkit does not re-pickle; no rng_state "
            "file written, so a Trainer resumed from the folder keeps its fresh generators") in result.dropped


def test_to_hf_writes_one_rng_file_per_rank_when_the_state_came_from_rank_files(tmp_path: Path) -> None:
    ranks = {f"rng_state_{r}.pth": {"python": (3, tuple(range(r, r + 625)), None),
                                    "numpy": ("MT19937", list(range(624)), r, 0, 0.0),
                                    "cpu": torch.full((4,), r, dtype=torch.uint8)} for r in (0, 1)}
    torch.save({"model": {"w": torch.ones(2)}, "rng_state": ranks, "step": 3}, tmp_path / "a.pth")
    result = convert_checkpoint(tmp_path / "a.pth", tmp_path / "hf", ConvertOptions(to="hf"))
    assert sorted(p.name for p in result.files) == ["model.safetensors", "rng_state_0.pth", "rng_state_1.pth",
                                                    "trainer_state.json"]
    assert torch.equal(torch.load(tmp_path / "hf" / "rng_state_1.pth", weights_only=True)["cpu"],
                       torch.full((4,), 1, dtype=torch.uint8))


def test_to_hf_with_max_shard_size_writes_hf_shards_beside_the_training_state_and_from_pretrained_loads_it(
        tmp_path: Path) -> None:
    from ckptkit.diffing import diff_paths
    from ckptkit.diffing.report import DiffOptions

    transformers = pytest.importorskip("transformers")
    source = FIXTURES / "hf_full" / "checkpoint-10"
    convert_checkpoint(source, tmp_path / "packed.pth")
    result = convert_checkpoint(tmp_path / "packed.pth", tmp_path / "checkpoint-10",
                                ConvertOptions(to="hf", max_shard_size=20_000))
    names = sorted(p.name for p in result.files)
    shards = [n for n in names if n.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors.index.json" in names and "model.safetensors" not in names
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= set(names)
    index = json.loads((tmp_path / "checkpoint-10" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert result.verified_tensors >= len(index["weight_map"])
    same = diff_paths(source, tmp_path / "checkpoint-10", DiffOptions(sections=("model", "optimizer", "scheduler")))
    assert same.equal
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-10")
    _assert_same_state_dict({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"},
                            load_file(source / "model.safetensors"))
