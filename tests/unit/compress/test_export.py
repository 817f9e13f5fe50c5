"""compress/export.py: the onnx step on a tiny BERT, and where it does not apply."""

from __future__ import annotations

import pytest
import torch

from slimforge.bench.measure import parameter_stats, size_on_disk_mb
from slimforge.compress import apply_step
from slimforge.compress.export import OrtModule
from slimforge.errors import SlimforgeError


def _hidden(loaded, texts=("onnx runtime runs this", "and this, padded")):
    batch = loaded.tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.inference_mode():
        return loaded.model(**batch).last_hidden_state, batch["attention_mask"]


def test_fused_fp32_graph_matches_torch(tiny_bert):
    ort = apply_step(tiny_bert, {"step": "onnx", "quantize": "none"})
    assert isinstance(ort.model, OrtModule)
    ref, mask = _hidden(tiny_bert)
    out, _ = _hidden(ort)
    keep = mask.bool()  # padded positions are not compared
    assert torch.allclose(out[keep], ref[keep], atol=1e-4)


def test_int8_graph_is_smaller_and_close(tiny_bert):
    fp32 = apply_step(tiny_bert, {"step": "onnx", "quantize": "none"})
    int8 = apply_step(tiny_bert, {"step": "onnx", "per_channel": True})
    assert size_on_disk_mb(int8.model) < size_on_disk_mb(fp32.model)
    ref, mask = _hidden(tiny_bert)
    out, _ = _hidden(int8)
    keep = mask.bool()
    cosine = torch.nn.functional.cosine_similarity(out[keep], ref[keep], dim=-1)
    assert cosine.mean() > 0.98
    params, sparsity = parameter_stats(fp32.model)
    assert params == pytest.approx(sum(p.numel() for p in tiny_bert.model.parameters()),
                                   rel=0.05)
    assert sparsity == 0.0


def test_onnx_applies_to_encoders_only(tiny_llama):
    with pytest.raises(SlimforgeError, match="does not apply to causal-lm models"):
        apply_step(tiny_llama, {"step": "onnx"})


def test_session_threads_follow_torch(tiny_bert):
    ort = apply_step(tiny_bert, {"step": "onnx", "quantize": "none"})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ref, _ = _hidden(ort)
        assert ort.model.threads == 2
        torch.set_num_threads(1)  # what `slimforge serve` sets for each batch worker
        out, _ = _hidden(ort)
        assert ort.model.threads == 1
        assert torch.allclose(out, ref, atol=1e-6)
        torch.set_num_threads(2)
        pinned = OrtModule(ort.model.onnx_bytes, threads=1)  # an explicit count is kept
        pinned(**tiny_bert.tokenizer(["pinned"], return_tensors="pt"))
        assert pinned.threads == 1
    finally:
        torch.set_num_threads(before)
