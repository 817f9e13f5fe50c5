"""compress/prune.py: the asked sparsity, in the asked pattern, by the asked score."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from slimforge.compress import apply_step
from slimforge.compress.prune import PruneConfig, cubic_sparsity, prune, targets
from slimforge.errors import SlimforgeError
from slimforge.models.load import load_model

CALIBRATION = ["a few words of calibration text", "and a second, slightly longer one here"]


def _zeros(weight: torch.Tensor) -> float:
    return float((weight == 0).float().mean())


@pytest.fixture(scope="module")
def llama():
    return load_model("builtin:tiny-llama")


def test_magnitude_zeroes_the_smallest_half_of_each_target_and_spares_the_rest(llama):
    pruned = apply_step(llama, {"step": "prune"}).model
    names = {name for name, _ in targets(pruned, PruneConfig().skip, [])}
    before = dict(llama.model.named_modules())
    for name, module in pruned.named_modules():
        if isinstance(module, nn.Linear):
            if name not in names:  # lm_head (tied to the embeddings: the padding row is 0)
                assert torch.equal(module.weight, before[name].weight), name
                continue
            assert _zeros(module.weight) == pytest.approx(0.5, abs=1e-3), name
            w, kept = before[name].weight.abs(), module.weight != 0
            assert w[kept].min() >= w[~kept].max()  # each weight kept outweighs each dropped
    assert "lm_head" not in names
    assert torch.equal(pruned.get_input_embeddings().weight,
                       llama.model.get_input_embeddings().weight)


def test_wanda_weighs_each_weight_by_its_input_and_prunes_within_rows():
    layer = nn.Sequential(nn.Linear(8, 4, bias=False))
    with torch.no_grad():
        layer[0].weight.copy_(torch.arange(32, dtype=torch.float32).reshape(4, 8) % 8 + 1)
    norms = {"0": [100.0, 1, 1, 1, 1, 1, 1, 1]}  # feature 0 carries huge activations
    out = prune(layer, PruneConfig(method="wanda", skip=[], input_norms=norms))[0].weight
    assert bool((out[:, 0] != 0).all())  # the smallest weights, but multiplied by the most
    assert all(int((row == 0).sum()) == 4 for row in out)  # half of every output row
    magnitude = prune(layer, PruneConfig(skip=[]))[0].weight
    assert bool((magnitude[:, 0] == 0).all())
    with pytest.raises(SlimforgeError, match="no input norms"):
        prune(layer, PruneConfig(method="wanda", skip=[]))


def test_two_of_four_keeps_exactly_two_in_every_group_of_four(llama):
    pruned = apply_step(llama, {"step": "prune", "pattern": "2:4", "method": "wanda"},
                        calibration=CALIBRATION).model
    for name, module in targets(pruned, PruneConfig().skip, []):
        groups = module.weight.reshape(module.weight.shape[0], -1, 4)
        assert bool(((groups != 0).sum(dim=-1) == 2).all()), name
    with pytest.raises(SlimforgeError, match="multiples of 4"):
        prune(nn.Sequential(nn.Linear(6, 4)), PruneConfig(pattern="2:4", skip=[]))


def test_global_scope_shares_one_threshold_across_layers(llama):
    pruned = apply_step(llama, {"step": "prune", "scope": "global", "sparsity": 0.3}).model
    layers = targets(pruned, PruneConfig().skip, [])
    total = sum(int((m.weight == 0).sum()) for _, m in layers)
    assert total / sum(m.weight.numel() for _, m in layers) == pytest.approx(0.3, abs=1e-3)
    assert len({round(_zeros(m.weight), 3) for _, m in layers}) > 1  # not 30% everywhere


def test_config_refuses_what_does_not_go_together():
    with pytest.raises(ValidationError, match="2:4 keeps 2 of every 4"):
        PruneConfig(pattern="2:4", sparsity=0.3)
    with pytest.raises(ValidationError, match="within each output row"):
        PruneConfig(method="wanda", scope="global")
    assert "input_norms" not in PruneConfig(input_norms={"a": [1.0]}).model_dump()


def test_the_report_says_what_the_zeros_buy_and_each_layer_s_sparsity(llama):
    pruned = apply_step(llama, {"step": "prune", "sparsity": 0.25})
    assert any("no speed-up" in note for note in pruned.notes)
    assert pruned.layers["model.layers.0.mlp.up_proj"]["sparsity"] == pytest.approx(0.25)
    assert pruned.layers["lm_head"]["sparsity"] == pytest.approx(1 / 128)  # the padding row


def test_cubic_schedule_prunes_fast_first():
    assert cubic_sparsity(0, 10, 110, 0.8) == 0
    assert cubic_sparsity(60, 10, 110, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(500, 10, 110, 0.8) == 0.8


@pytest.mark.gpu
def test_two_of_four_uses_sparse_tensor_cores_on_a_gpu():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA GPU of compute capability 8.0+")
    model = nn.Sequential(nn.Linear(128, 128)).half().cuda()
    x = torch.randn(64, 128, dtype=torch.half, device="cuda")
    dense = prune(model, PruneConfig(pattern="2:4", skip=[]))
    assert type(dense[0].weight).__name__.startswith("SparseSemiStructured")
    reference = x @ dense[0].weight.to_dense().t() + dense[0].bias
    assert torch.allclose(dense(x), reference, atol=1e-2)
