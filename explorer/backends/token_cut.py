"""Cutting the token sequence inside a language model's blocks (FastV and its relatives): hooks
on blocks K..L-1 that make the kept tokens the only sequence. Which per-position inputs a block
receives (the 4-D attention mask, rotary `position_embeddings`, `position_ids`, `cache_position`,
GPT-2's positional mask) depends on the transformers version, so this lives in the backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from explorer.backends.language import LanguageModel


def gather_rows(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Per-row index along `dim` (>= 1): x (b0 in {1, B}, ...), index (B, k) -> (B, ..., k, ...)."""
    b = index.shape[0]
    x = x.expand(b, *x.shape[1:]) if x.shape[0] == 1 and b > 1 else x
    shape = [1] * x.dim()
    shape[0], shape[dim] = b, index.shape[1]
    idx = index.view(shape).expand(*[x.shape[i] if i != dim else index.shape[1] for i in range(x.dim())])
    return x.gather(dim, idx)


class FastVCut:
    """Forward pre-hooks on blocks K..L-1 that make the kept tokens the only sequence.

    Prefill (the hidden state entering block K has all T prompt tokens): the hidden state is
    cut to the kept rows, and every per-position input (the 4-D attention mask on both query
    and key axes, rotary `position_embeddings`, `position_ids`) is cut the same way, so kept
    tokens keep their original positions and a causal mask among themselves. Later blocks get
    the same cut inputs. Decoding (new tokens only): the mask's key axis is cut to the kept
    prompt tokens + the generated tokens, matching the pruned KV cache of those layers.
    """

    def __init__(
        self, kept: torch.Tensor, n_prompt: int, first_block: int, hidden_index: torch.Tensor | None = None
    ) -> None:
        self.kept = kept  # (B, k) int64
        self.n_prompt = n_prompt
        self.first_block = first_block
        self.prefill = True
        # (B, k) rows of the hidden state entering `first_block` to keep: `kept` when that state has
        # all prompt tokens; positions within an earlier cut's kept set for a later cut (progressive)
        self.hidden_index = kept if hidden_index is None else hidden_index

    def key_index(self, key_len: int) -> torch.Tensor:
        """(B, k + generated) key positions visible to blocks >= K."""
        extra = torch.arange(self.n_prompt, key_len, device=self.kept.device)
        return torch.cat([self.kept, extra.unsqueeze(0).expand(self.kept.shape[0], -1)], dim=1)

    def _cut_mask(self, mask: torch.Tensor) -> torch.Tensor:
        key = self.key_index(int(mask.shape[-1]))
        if self.prefill:
            mask = gather_rows(mask, 2, self.kept)
        return gather_rows(mask, 3, key)

    def _cut_value(self, name: str, value: Any) -> Any:
        if name == "attention_mask" and isinstance(value, torch.Tensor) and value.dim() == 4:
            return self._cut_mask(value)
        if not self.prefill:
            return value
        if name == "position_embeddings" and isinstance(value, tuple):
            return tuple(gather_rows(v, 1, self.kept) for v in value)
        if name == "position_ids" and isinstance(value, torch.Tensor) and value.dim() == 2:
            return gather_rows(value, 1, self.kept)
        if name == "cache_position" and isinstance(value, torch.Tensor) and value.dim() == 1:
            return value[self.kept[0]]
        return value

    def hook(self, block_index: int) -> Callable[..., Any]:
        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            new_args = list(args)
            if self.prefill and block_index == self.first_block:
                new_args[0] = gather_rows(args[0], 1, self.hidden_index)
            for i in range(1, len(new_args)):  # GPT-2 passes the mask positionally
                value = new_args[i]
                if isinstance(value, torch.Tensor) and value.dim() == 4:
                    new_args[i] = self._cut_mask(value)
            new_kwargs = {k: self._cut_value(k, v) for k, v in kwargs.items()}
            return tuple(new_args), new_kwargs

        return pre_hook

    def restore(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        """Forward hook on the last block: during the prefill, scatter the kept rows back into a
        full-length (B, T, d) tensor (zeros at dropped positions), because some models (GPT-2)
        reshape to the input length after the blocks. Only the last position is read out, and
        it is always kept."""
        if not self.prefill:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        full = hidden.new_zeros(hidden.shape[0], self.n_prompt, hidden.shape[-1])
        full.scatter_(1, self.kept.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]), hidden)
        return (full, *output[1:]) if isinstance(output, tuple) else full


@contextmanager
def fastv_hooks(lm: LanguageModel, cut: FastVCut | None) -> Iterator[None]:
    if cut is None:
        yield
        return
    blocks = lm.blocks()
    handles = [
        blocks[i].register_forward_pre_hook(cut.hook(i), with_kwargs=True)
        for i in range(cut.first_block, len(blocks))
    ]
    handles.append(blocks[len(blocks) - 1].register_forward_hook(cut.restore))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
