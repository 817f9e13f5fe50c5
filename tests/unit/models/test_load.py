"""models/load.py: every spec form, and a clear error for each way it can go wrong."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from slimforge.errors import CheckpointError, ModelLoadError
from slimforge.models.load import load_model
from slimforge.models.tasks import embed, task_for_architectures


def test_builtin_tiny_models():
    bert, llama = load_model("builtin:tiny-bert"), load_model("builtin:tiny-llama")
    assert (bert.task, llama.task) == ("embedding", "causal-lm")
    emb = embed(bert, ["a b c", "a longer sentence here"], max_length=32)
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ModelLoadError, match="Unknown built-in") as info:
        load_model("builtin:gpt-17")
    assert "builtin:minilm" in info.value.fix
    assert "builtin:smollm2" in info.value.fix


def test_module_spec_with_safetensors_weights(tmp_path):
    source = load_model("module:slimforge.models.tiny:TinyMLP")
    save_file(source.model.state_dict(), tmp_path / "w.safetensors")
    again = load_model("module:slimforge.models.tiny:TinyMLP",
                       weights=str(tmp_path / "w.safetensors"))
    x = torch.randn(3, 16)
    assert torch.equal(source.model(x), again.model(x))
    assert again.task == "classification"


def test_module_spec_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not of the form"):
        load_model("module:slimforge.models.tiny")
    with pytest.raises(ModelLoadError, match="Could not find 'Nope'"):
        load_model("module:slimforge.models.tiny:Nope")
    with pytest.raises(ModelLoadError, match="not an nn.Module"):
        load_model("module:slimforge.models.tiny:byte_tokenizer")
    save_file({"other": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_model("module:slimforge.models.tiny:TinyMLP", weights=str(tmp_path / "w.safetensors"))


def test_local_hf_folder_and_its_corruption(tmp_path, tiny_bert):
    tiny_bert.model.save_pretrained(tmp_path)
    tiny_bert.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.task == "embedding"
    assert loaded.pooling == "mean"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(str(tmp_path))


def test_paths_that_are_not_models(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./nowhere/model.gguf")
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no architecture"):
        load_model(str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="neither"):
        load_model(str(tmp_path))
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(CheckpointError, match="bad magic"):
        load_model(str(tmp_path / "fake.gguf"))
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + bytes(20))
    with pytest.raises(CheckpointError, match="Could not read the GGUF"):
        load_model(str(tmp_path / "cut.gguf"))


def test_hub_id_offline_gets_a_clear_error():
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1") as info:
        load_model("slimforge-tests/no-such-model")
    assert "pass the folder" in info.value.fix


def test_unknown_task_is_refused():
    with pytest.raises(ModelLoadError, match="Unknown task"):
        load_model("builtin:tiny-bert", task="vision")  # type: ignore[arg-type]


@pytest.mark.parametrize(("architectures", "task"), [
    (["LlamaForCausalLM"], "causal-lm"), (["GPT2LMHeadModel"], "causal-lm"),
    (["BertForSequenceClassification"], "classification"), (["BertModel"], "embedding"),
    (None, "embedding"),
])
def test_task_from_architectures(architectures, task):
    assert task_for_architectures(architectures) == task


def test_a_run_that_cannot_be_rebuilt_names_the_versions_that_wrote_it(tmp_path, tiny_bert):
    import json

    from slimforge.compress import apply_step
    from slimforge.io.checkpoint import write_manifest
    from slimforge.io.run import write_run

    run = write_run(tmp_path, "test", "builtin:tiny-bert", {}, {}, "#\n",
                    apply_step(tiny_bert, {"step": "quantize"}))
    meta_path = run / "model" / "slimforge.json"
    meta = json.loads(meta_path.read_text())
    meta["steps"][0]["granularity"] = "per-tensor"  # as if an older release stored it so
    meta_path.write_text(json.dumps(meta))
    manifest = write_manifest(run, "test", "builtin:tiny-bert", {})
    manifest["versions"]["torch"] = "1.13.0"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"Could not rebuild.*torch 1\.13\.0 \(now "):
        load_model(str(run))
