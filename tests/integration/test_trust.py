"""Trust end to end, as a user runs it: DP-SGD and adversarial training of the digits CNN
from the CLI, robust evaluation, and a real MiniLM artifact encrypted, signed, served
only with its signature, and refused without its key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from slimforge.errors import CheckpointError
from slimforge.io.run import write_run
from slimforge.models.load import load_model
from slimforge.models.tasks import embed
from slimforge.trust import protect


def slimforge(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimforge", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600, check=False,
                          env={**os.environ, **(env or {})})


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_cli_trains_digits_with_dp_then_protects_and_attacks_the_result(tmp_path):
    done = slimforge("train", "builtin:digits-cnn", "--data", "builtin:digits", "--steps", "80",
                     "--batch-size", "64", "--lr", "2e-3", "--privacy-epsilon", "8",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert 0 < result["train"]["privacy"]["epsilon"] <= 8
    assert result["after"]["accuracy"] > result["before"]["accuracy"]
    assert "spent epsilon" in (tmp_path / result["run"] / "report.md").read_text()

    assert slimforge("keys", "keys", cwd=tmp_path).returncode == 0
    done = slimforge("export", result["run"], "-o", "sealed", "--encrypt", "--key-file",
                     "keys/data.key", "--sign", "keys/signing.key", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = slimforge("evaluate", "sealed", "--data", "builtin:digits", cwd=tmp_path,
                     env={protect.KEY_ENV: "00" * 32})
    assert done.returncode == 2
    assert "key is wrong" in done.stderr
    assert "Traceback" not in done.stderr
    done = slimforge("evaluate", "sealed", "--data", "builtin:digits", "--attack", "pgd",
                     "--eps", "0.2", "--input-min", "0", "--input-max", "1", cwd=tmp_path,
                     env={protect.KEY_FILE_ENV: "keys/data.key",
                          protect.VERIFY_KEY_ENV: "keys/signing.pub"})
    assert done.returncode == 0, done.stderr
    figures = last_json(done.stdout)
    assert figures["accuracy"] == pytest.approx(result["after"]["accuracy"])
    assert figures["robust_accuracy"] < figures["accuracy"]
    assert figures["attack"]["method"] == "pgd"


def test_cli_adversarial_training_reports_robust_accuracy(tmp_path):
    done = slimforge("train", "builtin:digits-cnn", "--data", "builtin:digits", "--steps", "40",
                     "--batch-size", "64", "--lr", "3e-3", "--adversarial", "fgsm", "--eps",
                     "0.1", "--input-min", "0", "--input-max", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert set(result["after"]) == {"accuracy", "macro_f1", "robust_accuracy"}
    assert result["after"]["accuracy"] > 0.5


def test_cli_refuses_a_bad_option_in_one_line(tmp_path):
    done = slimforge("train", "builtin:digits-cnn", "--data", "builtin:digits",
                     "--privacy-epsilon", "8", "--accumulation", "2", cwd=tmp_path)
    assert done.returncode == 2
    assert "accumulation" in done.stderr
    assert "Traceback" not in done.stderr


def test_real_minilm_artifact_sealed_and_signed_round_trip(tmp_path, minilm, monkeypatch):
    run = write_run(tmp_path / "runs", "load", minilm.spec, {}, {}, "# MiniLM\n", model=minilm)
    keys = protect.new_keys(tmp_path / "keys")
    sealed = protect.protect_run(run, tmp_path / "sealed",
                                 key=protect.read_data_key(keys["data_key"]),
                                 signing_key=keys["signing_key"])
    monkeypatch.setenv(protect.KEY_FILE_ENV, str(keys["data_key"]))
    loaded = load_model(str(sealed), verify_key=str(keys["verify_key"]))
    texts = ["Return the sum of a and b.", "Open a file and return a stream."]
    with torch.no_grad():
        assert torch.equal(embed(loaded, texts), embed(minilm, texts))
    other = protect.new_keys(tmp_path / "other")
    with pytest.raises(CheckpointError, match="does not verify"):
        load_model(str(sealed), verify_key=str(other["verify_key"]))
