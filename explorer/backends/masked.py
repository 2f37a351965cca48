"""A masked LM (RoBERTa, BERT): ReAGent's replacement model in the paper.

Loaded once per process through the shared cache; `predict(texts)` is the only door to it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from explorer.backends.loading import MODEL_CACHE
from explorer.errors import ModelNotAvailableError
from explorer.model_policy import admit_model, load_errors_hidden

MAX_MLM_TOKENS = 512


@dataclass
class MaskedLM:
    """A loaded masked LM (eval mode) and its tokenizer."""

    name: str
    hf_model: Any
    tokenizer: Any
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @torch.inference_mode()
    def predict(self, texts: list[str]) -> tuple[Any, torch.Tensor]:
        """Tokenise `texts` (padded, truncated to 512 tokens) and return (the encoding,
        logits (N, T, mlm_vocab) float32 on the CPU)."""
        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=MAX_MLM_TOKENS
        )
        device = next(self.hf_model.parameters()).device
        with self.lock:
            logits = self.hf_model(**{k: v.to(device) for k, v in enc.items()}).logits
        return enc, logits.float().cpu()


def load_masked_lm(name: str, device: torch.device, local_only: bool = False) -> MaskedLM:
    """Load (once per process) a masked LM by hub id or local directory.

    Raises ModelNotAvailableError with a clear message when it cannot be loaded here.
    `local_only` never touches the network (used by replacement='auto').
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    def factory() -> MaskedLM:
        offline = local_only or os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=offline)
            model = AutoModelForMaskedLM.from_pretrained(name, local_files_only=offline, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ModelNotAvailableError(
                f"masked LM {name!r} for ReAGent's replacements is not available here"
                f"{' (offline: only local directories and the Hugging Face cache)' if offline else ''}; "
                f"use replacement='causal' (the analysed model proposes replacements) or 'uniform'. "
                f"Details: {str(exc).splitlines()[0][:200]}"
            ) from exc
        if tok.mask_token is None:
            raise ModelNotAvailableError(f"{name!r} has no mask token: it is not a masked LM")
        model.to(device).eval()
        return MaskedLM(name=name, hf_model=model, tokenizer=tok)

    with load_errors_hidden(name, None):
        name = admit_model(name)  # the host's allow-list covers masked LMs too
        result: MaskedLM = MODEL_CACHE.get(("mlm:" + name, str(device)), factory)
    return result
