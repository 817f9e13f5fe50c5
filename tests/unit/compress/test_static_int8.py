"""compress/static_int8.py: calibrated int8 for Linear and Conv2d, and its save/reload."""

from __future__ import annotations

import pytest
import torch

from slimforge.compress import apply_step
from slimforge.compress.quantize import QuantConfig, cpu_has_vnni, quantize, quantized_layers
from slimforge.compress.static_int8 import StaticInt8Conv2d, StaticInt8Linear, calibrate_static
from slimforge.errors import RecipeError, SlimforgeError
from slimforge.io.run import write_run
from slimforge.models.load import load_model
from slimforge.models.tiny import TinyCNN


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


def _cnn_and_batches():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    return model, [(torch.randn(8, 3, 16, 16),) for _ in range(4)]


def test_a_cnn_quantized_statically_stays_close():
    model, batches = _cnn_and_batches()
    config = QuantConfig(method="static-int8", embeddings=False)
    layers = quantized_layers(model, config)
    assert layers == ["features.0", "features.2", "head"]
    # 8-bit activations only where the CPU has VNNI, as `activation_range: auto` does: without
    # it fbgemm's int16 pair sums saturate (measured on an AVX2 EPYC: 14.7 dB at 8 bits).
    qparams = calibrate_static(model, layers, batches, full_range=cpu_has_vnni())
    assert len(qparams["features.0"]) == 4  # conv: input and output ranges
    assert len(qparams["head"]) == 2
    q = quantize(model, config.model_copy(update={"activation_qparams": qparams}))
    assert isinstance(q.features[0], StaticInt8Conv2d)
    assert isinstance(q.head, StaticInt8Linear)
    x = torch.randn(16, 3, 16, 16)
    with torch.inference_mode():
        assert _sqnr_db(model(x), q(x)) > 25
        assert torch.equal(q(x[:1]), q(x)[:1])  # fixed ranges: no batch-mate effect


def test_static_text_model_calibrates_in_prepare_and_reloads(tiny_bert, tmp_path):
    q = apply_step(tiny_bert, {"step": "quantize", "method": "static-int8"},
                   calibration=["calibration text one", "and another, longer, sentence"])
    recorded = q.steps[-1]["activation_qparams"]
    assert set(recorded) == set(quantized_layers(tiny_bert.model, QuantConfig(
        method="static-int8", embeddings=False)))
    again = load_model(str(write_run(tmp_path, "t", "builtin:tiny-bert", {}, {}, "#\n", q)))
    batch = tiny_bert.tokenizer(["held-out words"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(again.model(**batch).last_hidden_state,
                           q.model(**batch).last_hidden_state)


def test_missing_ranges_and_unreached_layers_are_clear_errors():
    model, batches = _cnn_and_batches()
    with pytest.raises(SlimforgeError, match="no calibrated activation range for features.0"):
        quantize(model, QuantConfig(method="static-int8"))
    unused = torch.nn.ModuleDict({"used": torch.nn.Linear(4, 4), "unused": torch.nn.Linear(4, 4)})
    unused.forward = lambda x: unused["used"](x)
    with pytest.raises(SlimforgeError, match="never reached unused"):
        calibrate_static(unused, ["used", "unused"], [(torch.randn(2, 4),)], full_range=True)
    with pytest.raises(SlimforgeError, match="got no batch"):
        calibrate_static(model, ["head"], [], full_range=True)


def test_activation_qparams_belong_to_static_int8():
    from slimforge.compress import parse_step

    with pytest.raises(RecipeError, match="activation_qparams applies to static-int8 only"):
        parse_step({"step": "quantize", "activation_qparams": {"a": [1.0, 0.0]}})
