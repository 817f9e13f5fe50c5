"""The generation engine: a fixed set of sequence slots over a static KV cache, decoded one
token per step by a compiled function, with sequences joining and leaving between steps.

Owns: `Engine` (the step API: `submit`, `step`, `generate`, plus `score` for perplexity),
`Completion` and `TokenEvent`. A prompt is prefilled alone into a free slot (dense GEMMs:
compute-bound), and from then on the sequence decodes with every other running one in a
single fixed-shape step (memory-bound: weights are read once per step whatever the number of
slots). That step is `forward.decode` compiled by `torch.compile` once per engine (its slot
count and weights fix every shape but the attention span, which is compiled symbolic and
bucketed to powers of two up to `max_len`, so attention reads only the cache in use);
`compile_seconds` records the cost, paid on the first step (or `warmup`) and never again in
the engine's life, checked by a test that counts recompiles. On a GPU the compiled step
replays as a CUDA graph. If compiling fails, or `compile=False`, the same function runs eagerly and
`fallback` says why in one line.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimforge.generate.forward import KVCache, decode, prefill, visible_mask
from slimforge.generate.sampling import GenerationError, Sampler, SamplingParams
from slimforge.generate.weights import DecoderWeights, decoder_weights

log = logging.getLogger("slimforge.generate")

OnToken = Callable[["TokenEvent"], None]
MIN_SPAN = 64
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one request (what a stream callback receives)."""

    request: int
    token: int
    text: str  # the text this token completed ("" while a multi-byte character is partial)


@dataclass
class Completion:
    """A finished request.

    `finish_reason` is `stop` (end-of-sequence token or a stop string), `length`
    (`max_new_tokens`) or `context` (the engine's `max_len` was reached).
    """

    request: int
    prompt_tokens: int
    tokens: list[int]
    text: str
    finish_reason: str


@dataclass
class _Sequence:
    request: int
    prompt: list[int]
    params: SamplingParams
    sampler: Sampler
    on_token: OnToken | None
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    text_offsets: tuple[int, int] = (0, 0)  # tokens[a:b] is the last piece turned into text
    finish: str | None = None

    @property
    def length(self) -> int:  # tokens whose keys and values are (or are being) cached
        return len(self.prompt) + len(self.tokens)


def _spans(max_len: int) -> list[int]:
    spans, span = [], MIN_SPAN
    while span < max_len:
        spans.append(span)
        span *= 2
    return [*spans, max_len]


class Engine:
    """Generates text from a Llama-style causal LM with a compiled, static-shape decode step.

    Args:
        model: a transformers Llama-style causal LM (see `weights.unsupported_reason`).
        tokenizer: its tokenizer (for text, stop strings and the end-of-sequence token); may be
            None when only token ids are used.
        format: weight format (`fp32`, `bf16`, `int8`, `int4`; see `weights`).
        slots: sequences decoded together (the decode step's batch size).
        max_len: tokens per sequence, prompt included (the cache's length).
        compile: compile the decode step (else run it eagerly).
        device: where to run; defaults to the model's device.
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None, format: str = "bf16",
                 slots: int = 1, max_len: int = 1024, compile: bool = True,
                 device: torch.device | str | None = None) -> None:
        if slots < 1 or max_len < 2:
            raise GenerationError(f"An engine needs at least 1 slot and max_len 2 (got "
                                  f"slots={slots}, max_len={max_len}).", "raise them.")
        self.device = torch.device(device) if device is not None else \
            next(model.parameters()).device
        if self.device.type != "cpu" and format in ("int8", "int4"):
            log.warning("slimforge.generate: the packed %s kernels are CPU ones here; "
                        "decoding in bf16 on %s", format, self.device)
            format = "bf16"
        with torch.inference_mode():
            self.weights: DecoderWeights = _to(decoder_weights(model, format), self.device)
        self.tokenizer = tokenizer
        self.eos = _eos_ids(model, tokenizer)
        self.slots, self.max_len = slots, min(max_len, self.weights.max_positions)
        # One spare position: a span never equals the cache's length, which the compiler
        # would otherwise specialise on.
        self.cache = KVCache.allocate(self.weights, slots, self.max_len + 1, self.device)
        self.spans = _spans(self.max_len)
        self.compile_seconds: float | None = None  # the first (compiling) call's time
        self.fallback: str | None = None if compile else "compile=False"
        self._step_fn = self._compiled() if compile else _eager_step
        self._free = list(range(slots))
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._next_request = 0

    # -- compile ------------------------------------------------------------------------

    def _compiled(self) -> Callable[..., torch.Tensor]:
        # Every engine in the process shares the compiled function: one graph per engine
        # shape (slots, model, format); dynamo's default of 8 would silently go eager after.
        if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
            torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs
        if self.device.type == "cuda":
            for tensor in (*self.cache.keys, *self.cache.values):
                torch._dynamo.mark_static_address(tensor)
        return torch.compile(_eager_step, fullgraph=True, mode=mode)

    def _run_step(self, tokens: torch.Tensor, positions: torch.Tensor, span: int
                  ) -> torch.Tensor:
        visible = self._visible(positions, span)
        if self.fallback is not None:
            return self._step_fn(self.weights, self.cache, tokens, positions, visible)
        start = time.perf_counter()
        try:
            # Only the span is symbolic: dynamo must not generalise the slot count or
            # weight shapes it sees change between engines. Float formats round bf16 values
            # where eager rounds them, so compiled greedy decoding follows eager's; the
            # quantized formats, whose contract is a perplexity floor, skip that emulation
            # (it costs ~20% of int4 decode speed: 82 vs 98 tokens/s measured).
            emulate = self.weights.format in ("fp32", "bf16")
            with torch._dynamo.config.patch(automatic_dynamic_shapes=False), \
                    torch._inductor.config.patch(emulate_precision_casts=emulate):
                logits = self._step_fn(self.weights, self.cache, tokens, positions, visible)
        except Exception as exc:  # inductor or a kernel missing: decode eagerly, say why
            self.fallback = f"compile failed ({type(exc).__name__}: {str(exc)[:200]})"
            log.warning("slimforge.generate: %s; decoding eagerly", self.fallback)
            self._step_fn = _eager_step  # rewriting this step's cache entries is harmless
            return self._step_fn(self.weights, self.cache, tokens, positions, visible)
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - start
        return logits

    def _visible(self, positions: torch.Tensor, span: int) -> torch.Tensor:
        visible = visible_mask(positions, span)
        if self.fallback is None:
            torch._dynamo.maybe_mark_dynamic(visible, 1)  # one graph for every span
        return visible

    def warmup(self) -> float | None:
        """Compile the decode step now, so no request pays for it; returns the seconds it
        took (None when decoding eagerly)."""
        with torch.inference_mode():
            tokens = torch.zeros(self.slots, dtype=torch.long, device=self.device)
            positions = torch.zeros(self.slots, dtype=torch.long, device=self.device)
            self._run_step(tokens, positions, self.spans[0])
        return self.compile_seconds

    # -- the step API -------------------------------------------------------------------

    def submit(self, prompt: list[int] | str, params: SamplingParams | None = None,
               on_token: OnToken | None = None) -> int:
        """Queue a prompt (token ids or text); it starts at the next `step` with a free slot.

        Returns:
            The request id that `Completion` and `TokenEvent` carry.

        Raises:
            GenerationError: the prompt is empty or does not fit `max_len`.
        """
        params = params or SamplingParams()
        ids = self._encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise GenerationError("The prompt is empty.", "give at least one token.")
        if len(ids) >= self.max_len:
            raise GenerationError(
                f"The prompt has {len(ids)} tokens; this engine holds {self.max_len} per "
                "sequence, generated tokens included.", "shorten the prompt or raise max_len.")
        request = self._next_request
        self._next_request += 1
        self._waiting.append(_Sequence(request, ids, params, Sampler(params), on_token))
        return request

    @property
    def busy(self) -> bool:
        """Whether any request is waiting or running."""
        return bool(self._waiting or self._running)

    def cancel(self, request: int) -> bool:
        """Drop a waiting or running request (its slot frees at once); False if unknown."""
        for sequence in [*self._waiting, *self._running]:
            if sequence.request == request:
                sequence.finish = "cancelled"
                self._retire()
                self._waiting = deque(s for s in self._waiting if s.finish is None)
                return True
        return False

    @torch.inference_mode()
    def step(self) -> list[Completion]:
        """Admit waiting prompts into free slots (prefill, first token), then advance every
        running sequence by one token. Returns the requests that finished in this step."""
        done: list[Completion] = []
        while self._waiting and self._free:
            sequence = self._waiting.popleft()
            sequence.slot = self._free.pop(0)
            ids = torch.tensor(sequence.prompt, dtype=torch.long, device=self.device)
            logits = prefill(self.weights, self.cache, sequence.slot, ids)
            self._running.append(sequence)
            self._accept(sequence, logits)
        ready = [s for s in self._running if s.finish is None]  # admitted ones join at once
        if ready:
            self._decode(ready)
        done.extend(self._retire())
        return done

    def _decode(self, ready: list[_Sequence]) -> None:
        tokens = torch.zeros(self.slots, dtype=torch.long)
        positions = torch.zeros(self.slots, dtype=torch.long)
        for sequence in ready:
            tokens[sequence.slot] = sequence.tokens[-1]
            positions[sequence.slot] = sequence.length - 1
        span = next(s for s in self.spans if s > int(positions.max()))
        logits = self._run_step(tokens.to(self.device), positions.to(self.device), span)
        logits = logits.cpu()
        for sequence in ready:
            self._accept(sequence, logits[sequence.slot])

    def _accept(self, sequence: _Sequence, logits: torch.Tensor) -> None:
        """Pick the sequence's next token, stream it, and decide whether it is finished."""
        token = sequence.sampler.pick(logits.cpu(), sequence.prompt + sequence.tokens)
        params = sequence.params
        if token in self.eos and not params.ignore_eos:
            sequence.finish = "stop"
            return
        sequence.tokens.append(token)
        piece = self._extend_text(sequence)
        if sequence.on_token is not None:
            sequence.on_token(TokenEvent(sequence.request, token, piece))
        if params.stop and any(sequence.text.endswith(s) for s in params.stop):
            sequence.finish = "stop"
        elif len(sequence.tokens) >= params.max_new_tokens:
            sequence.finish = "length"
        elif sequence.length >= self.max_len:
            sequence.finish = "context"

    def _extend_text(self, sequence: _Sequence) -> str:
        """The text the newest token completes. Only the tokens since the last complete
        piece are decoded (with one token of context before them, for the tokenizer's
        spacing rules), so each step costs the same however long the sequence is."""
        if self.tokenizer is None:
            return ""
        start, done = sequence.text_offsets
        before = self.tokenizer.decode(sequence.tokens[start:done], skip_special_tokens=True)
        after = self.tokenizer.decode(sequence.tokens[start:], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # a multi-byte character is still partial
        piece = after[len(before):]
        sequence.text += piece
        sequence.text_offsets = (done, len(sequence.tokens))
        return piece

    def _retire(self) -> list[Completion]:
        done, running = [], []
        for sequence in self._running:
            if sequence.finish is None:
                running.append(sequence)
                continue
            self._free.append(sequence.slot)
            if sequence.finish != "cancelled":
                done.append(self._completion(sequence))
        self._running = running
        return done

    def _completion(self, sequence: _Sequence) -> Completion:
        text = sequence.text
        for stop in sequence.params.stop:
            if text.endswith(stop):
                text = text[: -len(stop)]
                break
        return Completion(sequence.request, len(sequence.prompt), sequence.tokens, text,
                          sequence.finish or "length")

    def generate(self, prompts: list[list[int] | str] | list[int] | str,
                 params: SamplingParams | None = None, on_token: OnToken | None = None
                 ) -> list[Completion]:
        """Generate for every prompt (decoded together, `slots` at a time) and return the
        completions in prompt order."""
        single = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        ids = [self.submit(p, params, on_token) for p in batch]  # type: ignore[arg-type]
        finished: dict[int, Completion] = {}
        while len(finished) < len(ids):
            for completion in self.step():
                finished[completion.request] = completion
        return [finished[i] for i in ids]

    # -- scoring ------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, tokens: list[int] | torch.Tensor, last_only: bool = False
              ) -> torch.Tensor:
        """Float32 logits `[T, vocab]` for every position of `tokens` (perplexity), or of the
        last one `[vocab]` (a prompt's prefill), through the same weights as decoding; uses
        slot 0's cache, so call it between requests."""
        if self.busy:
            raise GenerationError("score() needs an idle engine.", "finish the requests first.")
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        if ids.numel() > self.max_len:
            raise GenerationError(f"{ids.numel()} tokens do not fit max_len {self.max_len}.",
                                  "score shorter windows or raise max_len.")
        return prefill(self.weights, self.cache, 0, ids, all_logits=not last_only)

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise GenerationError("A text prompt needs the engine's tokenizer.",
                                  "pass tokenizer= or give token ids.")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _eager_step(weights: DecoderWeights, cache: KVCache, tokens: torch.Tensor,
                positions: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    return decode(weights, cache, tokens, positions, visible)


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None),
                   tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _to(weights: DecoderWeights, device: torch.device) -> DecoderWeights:
    if device.type == "cpu":
        return weights
    import dataclasses

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(value, **{f.name: move(getattr(value, f.name))
                                                 for f in dataclasses.fields(value)})
        if isinstance(value, list):
            return [move(v) for v in value]
        return value
    return move(weights)
