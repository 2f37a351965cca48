"""One forward pass of a VLM's language model over a multimodal sequence, captured as a Trace.

The residual stream of every LM block (layer 0 = the input embeddings, text and projected
image tokens alike), the attention patterns, and the model's own logits. Image positions
are labelled `<img r,c>` (row, column of the patch grid), text positions by their token.
"""

from __future__ import annotations

from typing import Any

import torch

from explorer.trace import Trace, _first_tensor
from explorer.vlm.backend import MODALITY_IMAGE, VisionLanguageModel, VLMInputs


def position_labels(vlm: VisionLanguageModel, ids: list[int], modality: list[str], grid: Any) -> list[str]:
    labels = []
    image_index = 0
    cols = grid[1] if grid else 1
    for tid, mod in zip(ids, modality, strict=True):
        if mod == MODALITY_IMAGE:
            r, c = divmod(image_index, cols)
            labels.append(f"<img {r},{c}>")
            image_index += 1
        else:
            labels.append(vlm.lm.token_str(tid))
    return labels


@torch.no_grad()
def capture_vlm(
    vlm: VisionLanguageModel,
    inputs: VLMInputs,
    extra_ids: list[int] | None = None,
    attentions: bool = False,
) -> tuple[Trace, list[str]]:
    """Trace of prompt (+ `extra_ids`, e.g. generated tokens) -> (Trace, modality per position)."""
    extra = list(extra_ids or [])
    blocks = vlm.lm.blocks()
    n = len(blocks)
    captured: list[torch.Tensor | None] = [None] * (n + 1)

    def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        captured[0] = _first_tensor(hidden)

    def make_hook(i: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured[i + 1] = _first_tensor(output)

        return hook

    handles = [blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [block.register_forward_hook(make_hook(i)) for i, block in enumerate(blocks)]
    try:
        with vlm.lock, vlm.lm.lock:
            out = vlm.forward(inputs, extra_ids=extra, output_attentions=attentions)
    finally:
        for h in handles:
            h.remove()
    if any(c is None for c in captured):
        raise RuntimeError("a block did not run: the architecture spec points at the wrong modules")
    residual = torch.stack([c[0].float() for c in captured if c is not None])
    att = None
    if attentions:
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("the model returned no attentions; load it with attn_implementation='eager'")
        att = torch.stack([a[0].float() for a in out.attentions])
    ids = torch.cat([inputs.input_ids, torch.tensor(extra, dtype=torch.long)])
    modality = inputs.modality + ["text"] * len(extra)
    trace = Trace(
        input_ids=ids,
        tokens=position_labels(vlm, ids.tolist(), modality, inputs.grid),
        residual=residual.cpu(),
        attentions=att.cpu() if att is not None else None,
        logits=out.logits[0].float().cpu(),
    )
    return trace, modality
