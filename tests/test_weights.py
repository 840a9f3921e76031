"""Weight files as transformers reads them: ``pytorch_model.bin`` through ``torch.load(weights_only=True)``,
sharded pickles, code-executing pickles refused, safetensors preferred; for transformers-format
ALIGN repos and align_hf folders, from a Hub cache by repo id."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from align_hf import AlignModel
from align_hf.hub import UnsafePickleError, load_weight_file, weight_files
from align_hf.testing import tiny_model
from hf_reference import healthy_hf_align

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def as_hub_cache(source: Path, cache_dir: Path, repo_id: str) -> Path:
    """Store the files of ``source`` as huggingface_hub's cache does after a download: content in
    ``blobs/<sha256>``, ``snapshots/<commit>/<name>`` symlinks to them, ``refs/main`` the commit."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    return snapshot


def to_pickles(folder: Path, shards: int = 1) -> dict[str, torch.Tensor]:
    """Replace ``folder/model.safetensors`` by ``pytorch_model.bin`` (or ``shards`` files plus the
    ``pytorch_model.bin.index.json`` transformers writes); returns the state dict."""
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return state
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return state


def _tamper(marker: str, state: dict) -> dict:
    """Runs while unpickling a :class:`_Payload`: proof that the pickle executed code."""
    Path(marker).write_text("code ran while unpickling")
    return state


class _Payload:
    """Pickles as a call to :func:`_tamper`, as a malicious checkpoint would call ``os.system``."""

    def __init__(self, marker: Path, state: dict):
        self.marker, self.state = str(marker), state

    def __reduce__(self):
        return _tamper, (self.marker, self.state)


def _inputs(vocab_size: int, size: int = 64):
    g = torch.Generator().manual_seed(5)
    return torch.randint(5, vocab_size, (2, 7), generator=g), torch.randn(2, 3, size, size, generator=g)


@pytest.fixture(scope="module")
def reference():
    return healthy_hf_align(seed=6)


def _assert_same_as(model: AlignModel, reference: transformers.AlignModel) -> None:
    ids, pixels = _inputs(reference.config.text_config.vocab_size)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits_per_image
        theirs = reference(input_ids=ids, pixel_values=pixels).logits_per_image
    assert ours.std() > 1e-3  # the comparison below is not between two constants
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shards", [1, 3])
def test_transformers_repo_with_only_pickles_loads_by_id_from_hub_cache(reference, tmp_path, shards):
    source = tmp_path / "src"
    reference.save_pretrained(source)
    to_pickles(source, shards)
    assert not any(name.endswith(".safetensors") for name in os.listdir(source))
    as_hub_cache(source, tmp_path / "cache", "org/align-bin")
    # huggingface_hub itself recognises the layout as a cached revision of the repo
    (cached,) = huggingface_hub.scan_cache_dir(tmp_path / "cache").repos
    assert cached.repo_id == "org/align-bin" and {r.commit_hash for r in cached.revisions} == {COMMIT}

    model = AlignModel.from_pretrained("org/align-bin", cache_dir=tmp_path / "cache", local_files_only=True)
    _assert_same_as(model, reference)
    names = [os.path.basename(p) for p in weight_files("org/align-bin", cache_dir=tmp_path / "cache", local_files_only=True)]
    assert names == (["pytorch_model.bin"] if shards == 1 else [f"pytorch_model-{i:05d}-of-00003.bin" for i in (1, 2, 3)])


@pytest.mark.parametrize("shards", [1, 2])
def test_align_hf_folder_with_only_pickles_loads_by_id_from_hub_cache(tmp_path, shards):
    model = tiny_model(seed=3)
    source = tmp_path / "src"
    model.save_pretrained(source)
    to_pickles(source, shards)
    as_hub_cache(source, tmp_path / "cache", "org/tiny-bin")
    loaded = AlignModel.from_pretrained("org/tiny-bin", cache_dir=tmp_path / "cache", local_files_only=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)


def test_code_executing_pickle_is_refused_before_it_runs(reference, tmp_path):
    # transformers format
    hf_dir, marker = tmp_path / "hf", tmp_path / "marker"
    reference.save_pretrained(hf_dir)
    state = to_pickles(hf_dir)
    torch.save(_Payload(marker, state), hf_dir / "pytorch_model.bin")
    with pytest.raises(UnsafePickleError, match="allow_pickle=True") as refused:
        AlignModel.from_pretrained(hf_dir)
    assert str(hf_dir / "pytorch_model.bin") in str(refused.value) and "_tamper" in str(refused.value)
    assert not marker.exists()
    # allow_pickle=True keeps its meaning for callers that trust the file: full unpickling
    _assert_same_as(AlignModel.from_pretrained(hf_dir, allow_pickle=True), reference)
    assert marker.exists()

    # align_hf format
    ours, ours_marker = tmp_path / "ours", tmp_path / "ours_marker"
    model = tiny_model(seed=4)
    model.save_pretrained(ours)
    state = to_pickles(ours)
    torch.save(_Payload(ours_marker, state), ours / "pytorch_model.bin")
    with pytest.raises(UnsafePickleError, match="weights_only=True"):
        AlignModel.from_pretrained(ours)
    assert not ours_marker.exists()
    loaded = AlignModel.from_pretrained(ours, allow_pickle=True)
    torch.testing.assert_close(loaded.temperature, model.temperature)
    assert ours_marker.exists()


def test_safetensors_win_when_both_formats_exist(reference, tmp_path):
    # The .bin beside the safetensors is a code-executing pickle holding other weights: when the
    # safetensors are used, it is never unpickled at all.
    hf_dir, marker = tmp_path / "hf", tmp_path / "marker"
    reference.save_pretrained(hf_dir)
    state = load_file(hf_dir / "model.safetensors")
    torch.save(_Payload(marker, {k: torch.zeros_like(v) for k, v in state.items()}), hf_dir / "pytorch_model.bin")
    _assert_same_as(AlignModel.from_pretrained(hf_dir), reference)
    assert [os.path.basename(p) for p in weight_files(hf_dir)] == ["model.safetensors"]

    ours = tmp_path / "ours"
    model = tiny_model(seed=5)
    model.save_pretrained(ours)
    torch.save(_Payload(marker, {k: torch.zeros_like(v) for k, v in model.state_dict().items()}), ours / "pytorch_model.bin")
    loaded = AlignModel.from_pretrained(ours)
    torch.testing.assert_close(loaded.temperature, model.temperature)
    assert not marker.exists()
    # asking for the pickles explicitly still goes through the weights_only check
    with pytest.raises(UnsafePickleError):
        weight_files(ours, use_safetensors=False)


def test_weight_file_helpers(tmp_path):
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)}
    torch.save(state, tmp_path / "new.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("new.bin", "legacy.bin", "w.safetensors"):
        loaded = load_weight_file(str(tmp_path / name))
        assert loaded.keys() == state.keys()
        for key in state:
            torch.testing.assert_close(loaded[key], state[key], atol=0, rtol=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        weight_files(tmp_path / "empty")
    # an index naming a shard that is not there is an error, not a silently partial model
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "gone.bin"}}))
    with pytest.raises(FileNotFoundError, match="gone.bin"):
        weight_files(tmp_path / "sharded")
