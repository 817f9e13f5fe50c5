"""io/checkpoint.py: safe weights loading, manifests and their hashes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from slimforge.errors import CheckpointError
from slimforge.io.checkpoint import load_state_dict_file, verify_manifest, write_manifest


class Payload:
    """An arbitrary object: what a malicious pickle would carry."""


def test_safetensors_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(state, tmp_path / "m.safetensors")
    assert torch.equal(load_state_dict_file(tmp_path / "m.safetensors")["w"], state["w"])


def test_truncated_safetensors_gets_a_clear_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_state_dict_file(path)
    assert str(path) in info.value.message


def test_plain_state_dict_pickle_loads_with_weights_only(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(load_state_dict_file(path)["w"], torch.ones(2))


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refuses to unpickle") as info:
        load_state_dict_file(path)
    assert "safetensors" in info.value.fix


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown weights format"):
        load_state_dict_file(tmp_path / "w.npz")


def test_manifest_detects_tampering_and_missing_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"abc")
    manifest = write_manifest(tmp_path, "test", "spec", {"k": 1})
    assert set(manifest["files"]) == {"sub/a.bin"}
    assert manifest["versions"]["torch"] == torch.__version__
    assert verify_manifest(tmp_path)["spec"] == "spec"
    (tmp_path / "sub" / "a.bin").write_bytes(b"abd")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        verify_manifest(tmp_path)
    (tmp_path / "sub" / "a.bin").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        verify_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"no": "files"}))
    with pytest.raises(CheckpointError, match="not a slimforge manifest"):
        verify_manifest(tmp_path)
