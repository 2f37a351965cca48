"""The language-model backend: the only door to a causal LM.

`LanguageModel` offers what analyses need, named for meaning, and nothing of transformers
leaks past it:

* `forward(input_ids | inputs_embeds, ...)`: one pass -> `ForwardOutput` (logits, KV cache,
  attentions). Every transformers-version shim lives here: the KV-cache argument is `cache`
  in transformers >= 5 and `past_key_values` before; `logits_to_keep` is passed when the model
  accepts it and emulated by slicing when it does not.
* `capture(...) -> Trace`: one pass with hooks on the blocks (residual stream before block 0
  and after every block, attentions, logits, each position's modality).
* `generate(...)`: greedy or seeded sampling with a KV cache, batched, with per-step hooks.
* `embed`, `unembed`, `final_norm`, `blocks`.

Inputs can be embeddings instead of ids (`inputs_embeds`), so a vision-language model can
splice projected image patches into the sequence; `capture` records which positions are
"text" and which "image".

Models load once per process through `explorer.backends.loading` (shared with the vision
backend): the embedded SmolLM2-135M-Instruct, any hub id or a local directory, in the dtype
asked for ("auto" = float16 on CUDA, float32 on CPU).
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from explorer.backends.architectures import ArchitectureSpec, architecture_for
from explorer.backends.embedded import EMBEDDED_LMS, EMBEDDED_VISION_MODELS, resolve_model_source
from explorer.backends.loading import (
    MODEL_CACHE,
    cache_kwarg,
    cache_of,
    default_device,
    dtype_name,
    get_submodule,
    hub_kwargs,
    placement_kwargs,
    resolve_dtype,
    weight_fingerprint,
)
from explorer.backends.trace import IMAGE, TEXT, Trace, check_modality
from explorer.config import Settings
from explorer.errors import InputError, ModelNotAvailableError
from explorer.model_policy import admit_model, load_errors_hidden
from explorer.progress import ProgressFn, no_progress
from explorer.text_input import check_prompt

# Called after each generation step with (step index, chosen tokens (B,) int64 on the model's device).
StepHook = Callable[[int, torch.Tensor], None]
# Called at each generation step with (step index, next-token logits (B, vocab) float32) before the
# token is chosen; returns the logits to choose from (e.g. mixed with an early layer's logits).
LogitsHook = Callable[[int, torch.Tensor], torch.Tensor]
# Replaces a residual (B, T, d_model) by an edited one of the same shape and dtype.
ResidualEdit = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ForwardOutput:
    """One forward pass.

    logits:     (B, T_kept, vocab) in the model's dtype; T_kept = logits_to_keep or T
    cache:      the KV cache (opaque; pass it back to `forward(cache=...)`), or None
    attentions: one (B, n_heads, T, T) tensor per layer when asked for, else None
    """

    logits: torch.Tensor
    cache: Any = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class Generation:
    """What `generate` produced.

    tokens:          (B, N) int64 on the CPU; N <= max_new_tokens (shorter only when a
                     single sequence stops at EOS, which is kept)
    first_logits:    (B, vocab) float32 on the CPU: the next-token logits after the prompt
    prefill_seconds: wall time of the prefill (the whole batch)
    prefill_attentions: per layer (B, n_heads, T, T) from the prefill, when asked for
    """

    tokens: torch.Tensor
    first_logits: torch.Tensor
    prefill_seconds: float
    prefill_attentions: tuple[torch.Tensor, ...] | None = None

    def ids(self, row: int = 0) -> list[int]:
        return [int(t) for t in self.tokens[row].tolist()]


class _PassDone(Exception):
    """Ends a pass early, after the last block an `attention_hooks(stop=True)` wants."""


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "hidden_states", None) or getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find the hidden state in a block output of type {type(output).__name__}")


def _forward_parameters(hf_model: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(hf_model.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


@dataclass
class LanguageModel:
    """A loaded causal LM (eval mode, eager attention) and the verbs analyses use on it.

    `lock` (re-entrant) serialises passes: hooks are registered on shared modules, so two
    requests must not interleave. `forward`, `capture` and `generate` take it themselves;
    take it around a sequence of calls that must not interleave with another request.
    `hf_model` is the transformers module: only this package calls it.
    """

    model_id: str
    hf_model: Any  # transformers PreTrainedModel (causal LM), eval mode
    tokenizer: Any
    spec: ArchitectureSpec
    weight_hash: str
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _forward_args: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        if not self._forward_args:
            self._forward_args = _forward_parameters(self.hf_model)

    # ---- facts --------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.hf_model.config

    @property
    def dtype(self) -> torch.dtype:
        weight: torch.Tensor = self.embed_module().weight  # type: ignore[assignment]
        return weight.dtype

    @property
    def n_layers(self) -> int:
        return len(self.blocks())

    @property
    def d_model(self) -> int:
        weight: torch.Tensor = self.embed_module().weight  # type: ignore[assignment]
        return int(weight.shape[1])

    @property
    def vocab_size(self) -> int:
        weight: torch.Tensor = self.unembed_module().weight  # type: ignore[assignment]
        return int(weight.shape[0])

    @property
    def supports_logits_to_keep(self) -> bool:
        return "logits_to_keep" in self._forward_args

    @property
    def _cache_arg(self) -> str:
        return cache_kwarg(self._forward_args)

    # ---- parts --------------------------------------------------------------------------------
    def blocks(self) -> torch.nn.ModuleList:
        """The transformer blocks; block i maps residual i -> i + 1."""
        return get_submodule(self.hf_model, self.spec.blocks)  # type: ignore[return-value]

    def final_norm_module(self) -> torch.nn.Module:
        return get_submodule(self.hf_model, self.spec.final_norm)

    def unembed_module(self) -> torch.nn.Module:
        return get_submodule(self.hf_model, self.spec.unembed)

    def embed_module(self) -> torch.nn.Module:
        return get_submodule(self.hf_model, self.spec.embed)

    def attention_module(self, layer: int) -> torch.nn.Module:
        """Block `layer`'s attention module (its forward returns (output, weights) under eager attention)."""
        return get_submodule(self.blocks()[layer], self.spec.attention)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.hf_model.parameters())

    # ---- verbs --------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [...] -> input embeddings [..., d_model] in the model's dtype, on its device."""
        return self.embed_module()(ids.to(self.device))  # type: ignore[no-any-return]

    def final_norm(self, residual: torch.Tensor) -> torch.Tensor:
        """The model's final norm, in the model's dtype: [..., d] -> [..., d]."""
        return self.final_norm_module()(residual.to(self.dtype))  # type: ignore[no-any-return]

    def unembed(
        self, residual: torch.Tensor, normalize: bool = True, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Residual [..., d_model] -> logits [..., vocab]: final norm (if `normalize`), LM head,
        and the architecture's logit soft-cap, exactly as the model computes its output.

        The residual is cast to the model's dtype first (a float32 residual read out of a float16
        model would otherwise meet a float16 norm). `out` (rows, vocab), for 2-D input under
        no_grad: write the logits into this buffer (reusing one buffer across chunks avoids
        re-faulting hundreds of MB of fresh pages)."""
        x = self.final_norm(residual) if normalize else residual.to(self.dtype)
        head = self.unembed_module()
        cap_attr = self.spec.logit_softcap_attr
        cap = getattr(self.config, cap_attr, None) if cap_attr else None
        weight = getattr(head, "weight", None)
        if out is not None and isinstance(head, torch.nn.Linear) and x.dim() == 2 and weight is not None:
            logits = out[: x.shape[0]]
            torch.mm(x, weight.t(), out=logits)
            if head.bias is not None:
                logits += head.bias
            if cap:
                logits.div_(cap).tanh_().mul_(cap)
            return logits
        logits = head(x)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits  # type: ignore[no-any-return]

    def repeat_cache(self, cache: Any, n: int) -> Any | None:
        """The KV cache of one sequence repeated for a batch of `n` (in place), or None when this
        model's cache type cannot be repeated (then the caller runs the whole prompt per row)."""
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return None
        cache.batch_repeat_interleave(int(n))
        return cache

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        output_attentions: bool = False,
    ) -> ForwardOutput:
        """One pass over input_ids (B, T) or inputs_embeds (B, T, d) (exactly one of them).

        attention_mask / position_ids (B, T): for padded batches; cache: a previous output's
        cache (then give only the new tokens); logits_to_keep: compute logits for the last k
        positions only (0 = all). Gradients flow when the inputs require them."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        kwargs: dict[str, Any] = {"use_cache": use_cache}
        if input_ids is not None:
            kwargs["input_ids"] = input_ids.to(self.device)
        else:
            assert inputs_embeds is not None
            kwargs["inputs_embeds"] = inputs_embeds.to(self.device, self.dtype)
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids.to(self.device)
        if cache is not None:
            kwargs[self._cache_arg] = cache
        if output_attentions:
            kwargs["output_attentions"] = True
        keep_here = logits_to_keep > 0 and self.supports_logits_to_keep
        if keep_here:
            kwargs["logits_to_keep"] = logits_to_keep
        with self.lock:
            out = self.hf_model(**kwargs)
        logits = out.logits
        if logits_to_keep > 0 and not keep_here:
            logits = logits[:, -logits_to_keep:]
        new_cache = cache_of(out, self._cache_arg) if use_cache else None
        attentions = tuple(out.attentions) if output_attentions and out.attentions else None
        if output_attentions and (attentions is None or attentions[0] is None):
            raise RuntimeError("the model returned no attentions; load it with attn_implementation='eager'")
        return ForwardOutput(logits=logits, cache=new_cache, attentions=attentions)

    @torch.no_grad()
    def capture(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        modality: Sequence[str] | None = None,
        attentions: bool = True,
    ) -> Trace:
        """Run once on one sequence and capture residuals, attentions and logits.

        input_ids: (seq,) int64. Or inputs_embeds: (seq, d) (e.g. text embeddings with projected
        image patches spliced in); then `input_ids` may still be given to label the text
        positions (-1 where a position has no token). modality: one of "text"/"image" per
        position (default: "image" where input_ids < 0 or no ids are given, else "text")."""
        if input_ids is None and inputs_embeds is None:
            raise ValueError("give input_ids or inputs_embeds")
        seq = int(inputs_embeds.shape[0]) if inputs_embeds is not None else int(input_ids.shape[0])  # type: ignore[union-attr]
        ids = input_ids.detach().cpu() if input_ids is not None else torch.full((seq,), -1, dtype=torch.long)
        if int(ids.shape[0]) != seq:
            raise ValueError(f"input_ids has {ids.shape[0]} positions, inputs_embeds {seq}")
        kinds = list(modality) if modality is not None else [TEXT if int(i) >= 0 else IMAGE for i in ids]
        check_modality(kinds, seq)
        blocks = self.blocks()
        n = len(blocks)
        captured: list[torch.Tensor | None] = [None] * (n + 1)

        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            captured[0] = _first_tensor(hidden)

        def make_hook(i: int) -> Any:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                captured[i + 1] = _first_tensor(output)

            return hook

        with self.lock:
            handles = [blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
            handles += [block.register_forward_hook(make_hook(i)) for i, block in enumerate(blocks)]
            try:
                if inputs_embeds is not None:
                    out = self.forward(inputs_embeds=inputs_embeds.unsqueeze(0), output_attentions=attentions)
                else:
                    out = self.forward(ids.unsqueeze(0), output_attentions=attentions)
            finally:
                for h in handles:
                    h.remove()
        if any(c is None for c in captured):
            raise RuntimeError("a block did not run: the architecture spec points at the wrong modules")
        residual = torch.stack([c[0].float() for c in captured if c is not None])  # (L+1, seq, d)
        att = (
            torch.stack([a[0].float() for a in out.attentions]) if out.attentions else None
        )  # (L, H, seq, seq)
        tokens = [self.token_str(int(i)) if int(i) >= 0 else "<image>" for i in ids.tolist()]
        return Trace(
            input_ids=ids,
            tokens=tokens,
            residual=residual,
            attentions=att,
            logits=out.logits[0].float(),
            modality=kinds,
        )

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        max_new_tokens: int = 1,
        *,
        inputs_embeds: torch.Tensor | None = None,
        sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
        stop_at_eos: bool = True,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
        step_hook: StepHook | None = None,
        logits_hook: LogitsHook | None = None,
        cache: Any = None,
    ) -> Generation:
        """Decode up to `max_new_tokens` after a prompt, with a KV cache.

        input_ids (T,) or (B, T), or inputs_embeds (T, d) or (B, T, d). Greedy by default;
        `sample` draws from softmax(logits / temperature) with a CPU generator seeded by `seed`
        (one stream, rows in order). A single sequence stops after the EOS token (kept) when
        `stop_at_eos`; batches always decode exactly `max_new_tokens`. attention_mask /
        position_ids (B, T) describe left-padded rows: decoding extends the mask with ones and
        continues each row's positions. `step_hook(step, tokens)` runs after every step (the
        prefill is step 0), before the next pass; `logits_hook(step, logits)` sees (and may
        replace) each step's float32 logits before the token is chosen. `cache`: the KV cache of a
        prefix already run (e.g. a shared prompt prefix, `repeat_cache`d over the batch); the
        inputs continue it. Only the last position's logits are computed."""
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if input_ids is not None and input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if inputs_embeds is not None and inputs_embeds.dim() == 2:
            inputs_embeds = inputs_embeds.unsqueeze(0)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        eos = self.tokenizer.eos_token_id
        mask = attention_mask.to(self.device) if attention_mask is not None else None
        pos = position_ids.to(self.device) if position_ids is not None else None

        def choose(logits: torch.Tensor) -> torch.Tensor:  # (B, vocab) -> (B,)
            if sample:
                probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
                return torch.multinomial(probs, 1, generator=gen)[:, 0].to(self.device)
            return logits.float().argmax(-1)

        with self.lock:
            t0 = time.perf_counter()
            out = self.forward(
                input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=mask,
                position_ids=pos,
                cache=cache,
                use_cache=max_new_tokens > 1,
                logits_to_keep=1,
                output_attentions=output_attentions,
            )
            prefill = time.perf_counter() - t0
            first = out.logits[:, -1].float()
            batch = int(first.shape[0])
            tokens: list[torch.Tensor] = []
            cache = out.cache
            logits = first
            for step in range(max_new_tokens):
                if step > 0:
                    if mask is not None:
                        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # (B, T + step)
                    if pos is not None:
                        pos = pos[:, -1:] + 1  # (B, 1)
                    step_out = self.forward(
                        tokens[-1].unsqueeze(1),
                        attention_mask=mask,
                        position_ids=pos,
                        cache=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    cache = step_out.cache
                    logits = step_out.logits[:, -1]
                if logits_hook is not None:
                    logits = logits_hook(step, logits.float())
                nxt = choose(logits)
                tokens.append(nxt)
                if step_hook is not None:
                    step_hook(step, nxt)
                if stop_at_eos and batch == 1 and eos is not None and int(nxt[0]) == eos:
                    break
        result = (
            torch.stack(tokens, dim=1).long().cpu() if tokens else torch.zeros(batch, 0, dtype=torch.long)
        )
        return Generation(
            tokens=result,
            first_logits=first.cpu(),
            prefill_seconds=prefill,
            prefill_attentions=out.attentions,
        )

    @torch.no_grad()
    def residuals(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]
    ) -> torch.Tensor:
        """Residual stream of a right-padded batch at the given layers, as `capture` defines them
        (0 = input to block 0, i = raw output of block i-1, no final norm).

        input_ids, attention_mask: (B, T); layers: sorted, in 0..n_layers.
        Returns (len(layers), B, T, d_model) float32 on the CPU. Padded positions hold garbage.
        The pass stops after the last block needed and computes no logits."""
        wanted = sorted({int(x) for x in layers})
        n = self.n_layers
        if not wanted or wanted[0] < 0 or wanted[-1] > n:
            raise ValueError(f"layers must lie in 0..{n} (got {list(layers)})")
        blocks = self.blocks()
        captured: dict[int, torch.Tensor] = {}
        last = wanted[-1]

        class _Done(Exception):
            pass

        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured[0] = _first_tensor(args[0] if args else kwargs.get("hidden_states")).float().cpu()
            if last == 0:
                raise _Done

        def make_hook(i: int) -> Any:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                if i + 1 in wanted:
                    captured[i + 1] = _first_tensor(output).float().cpu()
                if i + 1 == last:
                    raise _Done

            return hook

        with self.lock:
            handles = [blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
            handles += [block.register_forward_hook(make_hook(i)) for i, block in enumerate(blocks[:last])]
            try:
                self.forward(input_ids, attention_mask=attention_mask, logits_to_keep=1)
            except _Done:
                pass
            finally:
                for h in handles:
                    h.remove()
        return torch.stack([captured[x] for x in wanted])

    @torch.no_grad()
    def attention_pass(
        self,
        input_ids: torch.Tensor,
        on_layer: Callable[[int, torch.Tensor], None],
        layers: Sequence[int] | None = None,
    ) -> None:
        """One pass over input_ids (seq,) that hands each block's attention weights to
        `on_layer(layer, weights)` as soon as the block has run, weights (n_heads, seq, seq)
        float32 (query x key, rows sum to 1), and keeps none of them.

        Memory stays at one layer's matrices, where `capture(attentions=True)` holds every
        layer's at once (n_layers x n_heads x seq^2: 18 GB for SmolLM2 at 4,096 tokens).
        `layers`: only these blocks (the pass stops after the last one; default all)."""
        with self.lock, self.attention_hooks(on_layer, layers, stop=True):
            self.forward(input_ids.reshape(1, -1), logits_to_keep=1)

    @contextmanager
    def attention_hooks(
        self,
        on_layer: Callable[[int, torch.Tensor], None],
        layers: Sequence[int] | None = None,
        *,
        stop: bool = False,
    ) -> Iterator[None]:
        """While inside, every pass hands each wanted block's attention weights (n_heads, seq,
        seq) float32 of the first batch row to `on_layer(layer, weights)` as the block runs.
        With `stop`, the pass ends right after the last wanted block (the with-block returns
        normally). Needs eager attention. Call it holding the model's lock."""
        blocks = self.blocks()
        wanted = sorted({int(x) for x in layers}) if layers is not None else list(range(len(blocks)))
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(blocks):
            raise ValueError(f"layers must lie in 0..{len(blocks) - 1} (got {layers})")
        last = wanted[-1]

        def make_hook(i: int) -> Any:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
                    raise RuntimeError(
                        "the attention module returned no weights; load it with attn_implementation='eager'"
                    )
                on_layer(i, weights[0].float())
                if stop and i == last:
                    raise _PassDone

            return hook

        handles = [
            get_submodule(blocks[i], self.spec.attention).register_forward_hook(make_hook(i)) for i in wanted
        ]
        try:
            yield
        except _PassDone:
            pass
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def residual_edits(self, edits: dict[int, ResidualEdit]) -> Iterator[None]:
        """While inside (and under the lock), residual `l` (1..n_layers: the output of block l-1)
        is replaced by `edits[l](residual)` in every pass: prefill and each decoding step, at
        every position. residual: (B, T, d_model) in the model's dtype."""
        blocks = self.blocks()
        for layer in edits:
            if not 1 <= layer <= len(blocks):
                raise ValueError(f"residual layer {layer} is outside 1..{len(blocks)}")

        def make_hook(edit: ResidualEdit) -> Any:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                if isinstance(output, torch.Tensor):
                    return edit(output)
                if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                    return (edit(output[0]), *output[1:])
                raise TypeError(f"cannot edit a block output of type {type(output).__name__}")

            return hook

        with self.lock:
            handles = [blocks[layer - 1].register_forward_hook(make_hook(fn)) for layer, fn in edits.items()]
            try:
                yield
            finally:
                for h in handles:
                    h.remove()

    @contextmanager
    def residual_recorder(self, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
        """While inside (and under the lock), the returned dict holds, for each residual layer in
        `layers` (1..n_layers), the last position's residual (B, d_model) of the latest pass (the
        prefill, then each decoding step), after any `residual_edits` of that layer."""
        blocks = self.blocks()
        record: dict[int, torch.Tensor] = {}
        for layer in layers:
            if not 1 <= layer <= len(blocks):
                raise ValueError(f"residual layer {layer} is outside 1..{len(blocks)}")

        def make_hook(layer: int) -> Any:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                record[layer] = _first_tensor(output)[:, -1]

            return hook

        with self.lock:
            # registered after any edit hooks entered before, so they see the edited residual
            handles = [blocks[layer - 1].register_forward_hook(make_hook(layer)) for layer in layers]
            try:
                yield record
            finally:
                for h in handles:
                    h.remove()

    @contextmanager
    def memory_efficient_attention(self) -> Iterator[None]:
        """While inside (and under the lock), passes use PyTorch's fused attention (SDPA) instead
        of eager attention: no (batch, heads, T, T) weights are materialised or kept for the
        backward pass (18 GB for SmolLM2 at 4,096 tokens with eager). For passes that need no
        attention weights (gradients, batched probes); results agree to float rounding."""
        with self.lock:
            before = getattr(self.hf_model.config, "_attn_implementation", "eager")
            switch = hasattr(self.hf_model, "set_attn_implementation") and before != "sdpa"
            if switch:
                try:
                    self.hf_model.set_attn_implementation("sdpa")
                except (ValueError, ImportError):  # an architecture without SDPA: stay eager
                    switch = False
            try:
                yield
            finally:
                if switch:
                    self.hf_model.set_attn_implementation(before)

    @contextmanager
    def frozen_weights(self) -> Iterator[None]:
        """Turn off `requires_grad` on every parameter (restored on exit), under the lock.

        Gradient methods then build graphs only for the input embeddings: the weights are never
        touched and no `.grad` accumulates on them."""
        with self.lock:
            saved = [(p, p.requires_grad) for p in self.hf_model.parameters()]
            for p, _ in saved:
                p.requires_grad_(False)
            try:
                yield
            finally:
                for p, flag in saved:
                    p.requires_grad_(flag)

    # ---- tokens -------------------------------------------------------------------------------
    def token_str(self, token_id: int) -> str:
        return str(self.tokenizer.decode([int(token_id)]))

    def tokens_str(self, ids: list[int]) -> list[str]:
        return [self.token_str(i) for i in ids]


def encode(lm: LanguageModel, prompt: str, max_tokens: int, add_special_tokens: bool = True) -> torch.Tensor:
    """Tokenise `prompt` -> (seq,) ids, with the user-facing checks (empty, too long)."""
    check_prompt(prompt, max_tokens)  # empty, not valid Unicode, or too long by characters
    ids = lm.tokenizer(prompt, add_special_tokens=add_special_tokens, return_tensors="pt").input_ids[0]
    if ids.numel() == 0:
        raise InputError("the prompt produced no tokens")
    if ids.numel() > max_tokens:
        raise InputError(
            f"the prompt is {ids.numel()} tokens long; the maximum is {max_tokens} "
            f"(set EXPLORER_MAX_PROMPT_TOKENS to raise it)"
        )
    return ids


def capture(lm: LanguageModel, input_ids: torch.Tensor, attentions: bool = True) -> Trace:
    """`lm.capture(input_ids, attentions=...)` (kept as a function for existing callers)."""
    return lm.capture(input_ids, attentions=attentions)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
# model_type values of vision encoders (and of CLIP/SigLIP, whose text tower has no LM head)
VISION_MODEL_TYPES = frozenset(
    {"vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "siglip_vision_model", "clip", "siglip"}
)


def reject_non_causal_lm(name: str, source: str, extra: dict[str, Any]) -> None:
    """Raise InputError, before any weights load, when `source` is a vision model or its config
    has no causal-LM class: the logit lens and attribution need an unembedding."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    vision = (
        f"{name!r} is a vision model: it has no unembedding, so the logit lens and attribution do not "
        "apply; use the Attention tab's image mode or the Pruning lab"
    )
    if name in EMBEDDED_VISION_MODELS:
        raise InputError(vision)
    try:
        config = AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError):
        return  # the model load reports what is missing
    model_type = str(getattr(config, "model_type", ""))
    if model_type in VISION_MODEL_TYPES:
        raise InputError(vision)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InputError(
            f"{name!r} (model type {model_type!r}) has no causal-LM head: it has no unembedding, so the "
            "logit lens and attribution do not apply; give a decoder-only language model"
        )


def _load_language_model(
    name_or_path: str, settings: Settings, device: torch.device, dtype: torch.dtype, progress: ProgressFn
) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not name_or_path or not name_or_path.strip():
        raise ModelNotAvailableError("no model given")
    source = resolve_model_source(name_or_path, settings, progress)
    is_local = Path(source).exists()
    if not is_local and (
        name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1)
    ):
        raise ModelNotAvailableError(f"model path {name_or_path!r} does not exist")
    reject_non_causal_lm(name_or_path, source, hub_kwargs(is_local))
    progress(0.7, f"Loading {name_or_path}")
    try:
        extra = hub_kwargs(is_local)
        placement = placement_kwargs(settings.device_map)
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation="eager", **extra, **placement
        )
    except (OSError, ValueError) as exc:
        offline = bool(extra)
        hint = (
            " (offline mode: only the embedded models, local directories and models already in the "
            "Hugging Face cache can load)"
            if offline or not is_local
            else ""
        )
        known = ", ".join(sorted(EMBEDDED_LMS))
        raise ModelNotAvailableError(
            f"model {name_or_path!r} is not available locally{hint}. Embedded models: {known}. "
            f"Details: {str(exc).splitlines()[0][:300]}"
        ) from exc
    if not placement:  # with a device map, accelerate has placed every layer already
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    return wrap_model(model, tokenizer, model_id=name_or_path)


def load_model(
    name_or_path: str | None = None,
    *,
    settings: Settings | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: ProgressFn | None = None,
    check_allowed: bool = True,
) -> LanguageModel:
    """Load (once per process and dtype) a causal LM by embedded name, hub id or local directory.

    Eager attention is forced so attention weights can be returned; CUDA is used when
    available. `dtype`: "auto" (default: float16 on CUDA, float32 on CPU), "float32", "float16"
    or "bfloat16". Raises `ModelNotAvailableError` with a clear message when the model cannot
    be loaded here, `InputError` for an unknown dtype. The host's allow-list
    (EXPLORER_ALLOWED_MODELS) applies unless `check_allowed=False` (a part of an admitted model).
    """
    settings = settings or Settings.from_env()
    name = (name_or_path or settings.default_model).strip()
    dev = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype if dtype is not None else settings.dtype, dev)
    prog = progress or no_progress
    if not name:
        raise ModelNotAvailableError("no model given")
    with load_errors_hidden(name, settings):
        # the host's allow-list; one spelling per local dir
        name = admit_model(name, EMBEDDED_LMS, check_allowed=check_allowed)
        placed = () if settings.device_map == "none" else (f"device_map={settings.device_map}",)
        model: LanguageModel = MODEL_CACHE.get(
            ("lm:" + name, str(dev), dtype_name(torch_dtype), *placed),
            lambda: _load_language_model(name, settings, dev, torch_dtype, prog),
        )
    return model


def wrap_model(
    model: Any, tokenizer: Any, model_id: str = "in-memory", dtype: str | torch.dtype | None = None
) -> LanguageModel:
    """Wrap an already-built HF causal LM (e.g. a tiny random test model) as a backend.

    `dtype` (optional): convert the weights first (a copy is not made: the module is converted
    in place)."""
    model.eval()
    device = next(model.parameters()).device
    if dtype is not None:
        model.to(resolve_dtype(dtype, device))
    return LanguageModel(
        model_id=model_id,
        hf_model=model,
        tokenizer=tokenizer,
        spec=architecture_for(model.config.model_type),
        weight_hash=weight_fingerprint(model),
        device=device,
    )
