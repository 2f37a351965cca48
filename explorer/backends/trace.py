"""What one forward pass captured: residual stream, attentions, logits, and each position's modality.

`LanguageModel.capture(...)` returns a `Trace`. Views (logit lens, attention, sinks) work on
the Trace and never re-run the model. Residuals are the raw block outputs (not HF's
`hidden_states`, whose last entry already has the final norm applied), so the lens applies the
final norm uniformly to every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

TEXT = "text"
IMAGE = "image"
MODALITIES = (TEXT, IMAGE)


@dataclass
class Trace:
    """Captured internals of one forward pass over one sequence.

    input_ids:  (seq,) int64; positions given as embeddings (e.g. image patches) hold -1
    tokens:     seq strings, decoded one token at a time ("<image>" for image positions)
    residual:   (n_layers + 1, seq, d_model) float32; [0] = input to block 0, [i] = output of block i-1
    attentions: (n_layers, n_heads, seq, seq) float32 (query x key; rows sum to 1), or None
    logits:     (seq, vocab) float32, the model's own output
    modality:   seq strings, "text" or "image": what each position is
    """

    input_ids: torch.Tensor
    tokens: list[str]
    residual: torch.Tensor
    attentions: torch.Tensor | None
    logits: torch.Tensor
    modality: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.modality:
            self.modality = [TEXT] * self.seq_len
        check_modality(self.modality, self.seq_len)

    @property
    def n_layers(self) -> int:
        return int(self.residual.shape[0] - 1)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[0])

    def positions(self, modality: str) -> list[int]:
        """Positions of one modality, in order."""
        return [i for i, m in enumerate(self.modality) if m == modality]


def check_modality(modality: Sequence[str], seq_len: int) -> None:
    """Raise ValueError unless `modality` has one known entry per position."""
    if len(modality) != seq_len:
        raise ValueError(f"modality has {len(modality)} entries for {seq_len} positions")
    unknown = sorted(set(modality) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modality {unknown}; known: {', '.join(MODALITIES)}")
