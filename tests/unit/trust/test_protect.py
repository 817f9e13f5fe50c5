"""trust/protect.py and safe loading: encrypted weights need the right key and reveal any
flipped byte; signatures must verify when required; a malicious pickle never runs."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from slimforge.errors import CheckpointError
from slimforge.io.checkpoint import MANIFEST
from slimforge.io.run import write_run
from slimforge.models.load import load_model
from slimforge.trust import protect


@pytest.fixture
def run(tmp_path):
    loaded = load_model("builtin:digits-cnn")
    return write_run(tmp_path / "runs", "train", loaded.spec, {}, {}, "# r\n", model=loaded)


@pytest.fixture
def keys(tmp_path):
    return protect.new_keys(tmp_path / "keys")


def _outputs(loaded):
    with torch.no_grad():
        return loaded.model(torch.linspace(0, 1, 64).reshape(1, 1, 8, 8))


def test_keys_are_private_and_never_overwritten(keys):
    assert oct(keys["data_key"].stat().st_mode & 0o777) == "0o600"
    assert oct(keys["signing_key"].stat().st_mode & 0o777) == "0o600"
    with pytest.raises(CheckpointError, match="will not overwrite"):
        protect.new_keys(keys["data_key"].parent)


def test_encrypted_run_loads_with_the_right_key_only(run, keys, tmp_path, monkeypatch):
    key = protect.read_data_key(keys["data_key"])
    sealed = protect.protect_run(run, tmp_path / "sealed", key=key)
    assert not (sealed / "model" / "model.safetensors").exists()
    weights = (run / "model" / "model.safetensors").read_bytes()
    assert weights[-4096:] not in (sealed / "model" / "model.safetensors.sealed").read_bytes()
    monkeypatch.delenv(protect.KEY_ENV, raising=False)
    monkeypatch.delenv(protect.KEY_FILE_ENV, raising=False)
    with pytest.raises(CheckpointError, match="no key was given"):
        load_model(str(sealed))
    monkeypatch.setenv(protect.KEY_ENV, os.urandom(32).hex())
    with pytest.raises(CheckpointError, match="key is wrong, or the file was altered"):
        load_model(str(sealed))
    monkeypatch.setenv(protect.KEY_ENV, "abc")
    with pytest.raises(CheckpointError, match="64 hex digits"):
        load_model(str(sealed))
    monkeypatch.delenv(protect.KEY_ENV)
    monkeypatch.setenv(protect.KEY_FILE_ENV, str(keys["data_key"]))
    assert torch.equal(_outputs(load_model(str(sealed))), _outputs(load_model(str(run))))


def test_a_flipped_byte_is_detected_by_the_hash_and_by_the_cipher(run, keys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv(protect.KEY_FILE_ENV, str(keys["data_key"]))
    sealed = protect.protect_run(run, tmp_path / "sealed",
                                 key=protect.read_data_key(keys["data_key"]))
    blob = sealed / "model" / "model.safetensors.sealed"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_model(str(sealed))
    # an attacker who also rewrites the manifest's hash still meets GCM's tag
    manifest = json.loads((sealed / MANIFEST).read_text())
    manifest["files"]["model/model.safetensors.sealed"] = protect.sha256_file(blob)
    (sealed / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="key is wrong, or the file was altered"):
        load_model(str(sealed))


def test_signature_required_and_checked(run, keys, tmp_path, monkeypatch):
    signed = protect.protect_run(run, tmp_path / "signed", signing_key=keys["signing_key"])
    assert load_model(str(signed), verify_key=str(keys["verify_key"])).task == "classification"
    with pytest.raises(CheckpointError, match="not signed"):
        load_model(str(run), verify_key=str(keys["verify_key"]))
    other = protect.new_keys(tmp_path / "other")
    monkeypatch.setenv(protect.VERIFY_KEY_ENV, str(other["verify_key"]))
    with pytest.raises(CheckpointError, match="does not verify"):
        load_model(str(signed))
    # re-hashing a changed file into the manifest breaks the signature
    monkeypatch.setenv(protect.VERIFY_KEY_ENV, str(keys["verify_key"]))
    manifest = json.loads((signed / MANIFEST).read_text())
    manifest["command"] = "tampered"
    (signed / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not verify"):
        load_model(str(signed))


class _Exploit:
    """Unpickling this calls `open(path, "w")`: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pt"
    evil.write_bytes(pickle.dumps({"w": _Exploit(str(marker))}, protocol=2))
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        load_model("module:slimforge.models.tiny:DigitsCNN", weights=str(evil))
    assert not marker.exists()
    pickle.loads(evil.read_bytes())  # the control: the same bytes do run code when unpickled
    assert marker.exists()


def test_a_malicious_training_checkpoint_is_never_executed(tmp_path):
    from slimforge.errors import TrainingError
    from slimforge.train.state import STATE, load_state, save_state

    marker = tmp_path / "pwned"
    folder = tmp_path / "last"
    model = torch.nn.Linear(2, 2)
    save_state(folder, model, {}, {"step": 1})  # a real checkpoint, then its state swapped
    (folder / STATE).write_bytes(pickle.dumps({"x": _Exploit(str(marker))}, protocol=2))
    with pytest.raises(TrainingError, match="not a slimforge training state"):
        load_state(folder, model, {})
    assert not marker.exists()
