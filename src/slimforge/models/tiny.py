"""Tiny seeded models built from a config, for tests, docs and dry runs.

Owns: `byte_tokenizer`, `tiny_bert`, `tiny_llama`, `TinyMLP`, `TinyCNN`, `DigitsCNN`. Nothing
here downloads anything: weights are random with a fixed seed, and the tokenizer maps each
printable ASCII character to one id, so a test knows exactly what the model sees. They are
also reachable as specs: `builtin:tiny-bert`, `builtin:tiny-llama`,
`module:slimforge.models.tiny:TinyMLP`, `module:slimforge.models.tiny:TinyCNN`,
`builtin:digits-cnn`.

    >>> model = tiny_bert(seed=0)
    >>> sum(p.numel() for p in model.parameters()) < 100_000
    True
"""

from __future__ import annotations

import torch
from torch import nn

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
VOCAB_SIZE = 128  # 4 special tokens + 95 printable ASCII characters, rounded up


def byte_tokenizer(causal: bool = False):
    """A character-level fast tokenizer over printable ASCII (one id per character).

    Args:
        causal: when True, no [CLS]/[SEP] are added (a decoder-style tokenizer), and [SEP]
            doubles as the end-of-sequence token.

    Returns:
        A `transformers.PreTrainedTokenizerFast` that saves and loads like any other.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if not causal:
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    extra = {"eos_token": "[SEP]", "bos_token": "[CLS]"} if causal else {
        "cls_token": "[CLS]", "sep_token": "[SEP]"
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", **extra
    )


def tiny_bert(seed: int = 0):
    """A 2-layer BERT encoder (hidden 32, 2 heads) with seeded random weights."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return BertModel(config).eval()


def tiny_llama(seed: int = 0):
    """A 2-layer Llama decoder (hidden 32, 4 heads, 2 KV heads) with seeded random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


class TinyMLP(nn.Module):
    """A 2-layer classifier over 16 features and 4 classes: the plain `nn.Module` case."""

    def __init__(self, in_features: int = 16, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shape, used by `benchmark` for models without a tokenizer."""
        return (torch.randn(batch_size, self.in_features),)


class TinyCNN(nn.Module):
    """Two 3x3 convolutions and a linear head over 3 x 16 x 16 images, 10 classes: the
    convolutional case (static int8 quantizes Conv2d)."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(channels * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shape, used by `benchmark` for models without a tokenizer."""
        return (torch.randn(batch_size, 3, 16, 16),)


class DigitsCNN(nn.Module):
    """A small CNN for 1 x 8 x 8 images in [0, 1] and 10 classes (`builtin:digits`): two
    3x3 convolutions and two linear layers, no batch norm, so DP-SGD's per-sample gradients
    (Opacus) apply to every layer."""

    def __init__(self, channels: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(2 * channels * 4 * 4, 128), nn.ReLU(),
                                  nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shape, used by `benchmark` for models without a tokenizer."""
        return (torch.rand(batch_size, 1, 8, 8),)
