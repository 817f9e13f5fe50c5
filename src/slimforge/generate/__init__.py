"""Fast text generation for Llama-style causal LMs: a static KV cache, a compiled decode
step, packed weight-only int8/int4 kernels, sampling, and a step API for continuous batching.

    >>> from slimforge.generate import Engine, SamplingParams
    >>> from slimforge.models.tiny import byte_tokenizer, tiny_llama
    >>> engine = Engine(tiny_llama(), byte_tokenizer(causal=True), compile=False)
    >>> out = engine.generate("hello", SamplingParams(max_new_tokens=4, ignore_eos=True))
    >>> len(out[0].tokens)
    4
"""

from slimforge.generate.engine import Completion, Engine, TokenEvent
from slimforge.generate.sampling import GenerationError, SamplingParams
from slimforge.generate.weights import (
    FORMATS,
    format_of,
    not_served_by_engine,
    unsupported_reason,
)

__all__ = ["FORMATS", "Completion", "Engine", "GenerationError", "SamplingParams",
           "TokenEvent", "format_of", "not_served_by_engine", "unsupported_reason"]
