"""errors.py, registry.py and runtime.py: the small shared pieces."""

from __future__ import annotations

import pytest
import torch

from slimforge.errors import CheckpointError, SlimforgeError
from slimforge.registry import Registry
from slimforge.runtime import setup_runtime


def test_error_carries_message_and_fix():
    err = CheckpointError("file x is corrupt.", "download it again.")
    assert isinstance(err, SlimforgeError)
    assert str(err) == "file x is corrupt. Fix: download it again."
    assert (err.message, err.fix) == ("file x is corrupt.", "download it again.")


def test_registry_registers_and_lists_known_names_on_a_miss():
    reg = Registry[int]("widget")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1
    assert reg.names() == ["a", "b"]
    assert "a" in reg
    assert "c" not in reg
    with pytest.raises(SlimforgeError, match="Unknown widget 'c'") as info:
        reg.get("c")
    assert info.value.fix == "use one of: a, b."


def test_registry_refuses_a_name_twice():
    reg = Registry[int]("widget")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(2)


def test_runtime_fixes_threads_and_seed_and_says_why():
    first = setup_runtime(device="cpu", threads=1, seed=7)
    a = torch.rand(3)
    setup_runtime(device="cpu", threads=1, seed=7)
    assert torch.equal(a, torch.rand(3))
    assert torch.get_num_threads() == 1
    assert first.device == "cpu"
    assert first.threads == 1
    assert any("threads=1: asked for" in r for r in first.reasons)
