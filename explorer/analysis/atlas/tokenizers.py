"""Tokenizer inspector: how a text splits under each tokenizer, side by side.

For each tokenizer: the tokens with ids, character spans, byte-fallback pieces (`<0xNN>`), partial
UTF-8 byte tokens and special tokens; the chat template applied to the text (when the tokenizer has
one) with its token count; and the token premium, each tokenizer's count divided by the first's.
Embedded tokenizers need no download: SmolLM2's (BPE, byte level) and all-MiniLM-L6-v2's (BERT
WordPiece); any hub id or local directory with a tokenizer loads as well.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from explorer.analysis.atlas.token_types import special_ids
from explorer.analysis.atlas.vocab_tokens import is_byte_level, is_partial_utf8, token_bytes
from explorer.errors import InputError
from explorer.params import params_json
from explorer.results import StoredFields, in_meta, in_table, register_result

EMBEDDED_TOKENIZERS = ("smollm2-135m", "all-minilm-l6-v2")
MAX_TEXT_CHARS = 20_000
MAX_TOKENIZERS = 6


def load_tokenizer(name: str, settings: Any) -> Any:
    """An embedded tokenizer by name, or AutoTokenizer on a hub id / local directory (offline-aware).

    Goes through the host's allow-list (EXPLORER_ALLOWED_MODELS) and the process's bounded model
    cache, like every model field: one canonical spelling per folder, loaded once."""
    from explorer.backends.embedded import EMBEDDED_LMS
    from explorer.backends.loading import MODEL_CACHE
    from explorer.model_policy import admit_model, load_errors_hidden

    with load_errors_hidden(name, settings):
        canonical = admit_model(name, (*EMBEDDED_TOKENIZERS, *EMBEDDED_LMS))
        return MODEL_CACHE.get(("tokenizer:" + canonical,), lambda: _load_tokenizer(canonical, settings))


def _load_tokenizer(name: str, settings: Any) -> Any:
    from explorer.backends.embedded import resolve_model_source
    from explorer.backends.loading import load_tokenizer
    from explorer.errors import ModelNotAvailableError

    if name == "all-minilm-l6-v2":
        from explorer.backends.sentence import sentence_model_dir

        return load_tokenizer(str(sentence_model_dir()))
    source = resolve_model_source(name, settings)
    try:
        return load_tokenizer(source)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"tokenizer {name!r} is not available here (offline: embedded names {list(EMBEDDED_TOKENIZERS)}, "
            f"local directories, or the Hugging Face cache). Details: {str(exc).splitlines()[0][:200]}"
        ) from exc


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TokenizedText:
    name: str
    kind: str  # e.g. "BPE, byte level"
    ids: list[int]
    pieces: list[str]  # the vocabulary entries
    decoded: list[str]  # each token decoded alone
    starts: list[int]  # character span in the text (-1 when unknown, e.g. added special tokens)
    ends: list[int]
    byte_fallback: list[bool]
    partial_utf8: list[bool]
    special: list[bool]
    chat_text: str | None
    chat_tokens: int | None

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


def tokenize(name: str, tokenizer: Any, text: str) -> TokenizedText:
    enc = tokenizer(text, return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    ids = [int(i) for i in enc["input_ids"]]
    offsets = enc.get("offset_mapping") or [(-1, -1)] * len(ids)
    specials = special_ids(tokenizer)
    byte_level = is_byte_level(tokenizer)
    pieces = [str(p) for p in tokenizer.convert_ids_to_tokens(ids)]
    chat_text = chat_tokens = None
    if getattr(tokenizer, "chat_template", None):
        chat_text = str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        )
        chat_tokens = len(tokenizer(chat_text, add_special_tokens=False).input_ids)
    model = ""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = type(backend.model).__name__
    return TokenizedText(
        name=name,
        kind=model + (", byte level" if byte_level else ""),
        ids=ids,
        pieces=pieces,
        decoded=[str(tokenizer.decode([i])) for i in ids],
        starts=[
            int(s) if i not in specials or s != e else -1 for (s, e), i in zip(offsets, ids, strict=True)
        ],
        ends=[int(e) if i not in specials or s != e else -1 for (s, e), i in zip(offsets, ids, strict=True)],
        byte_fallback=[p.startswith("<0x") and p.endswith(">") and len(p) == 6 for p in pieces],
        partial_utf8=[is_partial_utf8(token_bytes(tokenizer, i, byte_level)) for i in ids],
        special=[i in specials for i in ids],
        chat_text=chat_text,
        chat_tokens=chat_tokens,
    )


@register_result
@dataclass
class TokenizerResult(StoredFields):
    kind: ClassVar[str] = "tokenizer_inspect"

    text: str = in_meta()
    tokenizers: list[TokenizedText] = in_table()
    seconds: float = in_meta(decode=float)
    notes: list[str] = in_meta(default_factory=list)
    run_id: str | None = None

    def counts(self) -> list[dict[str, Any]]:
        base = self.tokenizers[0].n_tokens or 1
        return [
            {
                "tokenizer": t.name,
                "kind": t.kind,
                "tokens": t.n_tokens,
                "premium": t.n_tokens / base,
                "chars_per_token": len(self.text) / max(t.n_tokens, 1),
                "byte_fallback": sum(t.byte_fallback),
                "partial_utf8": sum(t.partial_utf8),
                "special": sum(t.special),
                "chat_template_tokens": t.chat_tokens,
            }
            for t in self.tokenizers
        ]

    def tokens_table(self) -> pa.Table:
        rows = []
        for t in self.tokenizers:
            for k in range(t.n_tokens):
                rows.append(
                    {
                        "tokenizer": t.name,
                        "index": k,
                        "token_id": t.ids[k],
                        "piece": t.pieces[k],
                        "decoded": t.decoded[k],
                        "start": t.starts[k],
                        "end": t.ends[k],
                        "byte_fallback": t.byte_fallback[k],
                        "partial_utf8": t.partial_utf8[k],
                        "special": t.special[k],
                    }
                )
        return pa.Table.from_pylist(rows)

    def json_views(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "tokenizers": [
                {
                    "tokenizer": t.name,
                    "kind": t.kind,
                    "tokens": [
                        {
                            "id": t.ids[k],
                            "piece": t.pieces[k],
                            "decoded": t.decoded[k],
                            "start": t.starts[k],
                            "end": t.ends[k],
                            "byte_fallback": t.byte_fallback[k],
                            "partial_utf8": t.partial_utf8[k],
                            "special": t.special[k],
                        }  # fmt: skip
                        for k in range(t.n_tokens)
                    ],
                    "chat_template": t.chat_text,
                    "chat_template_tokens": t.chat_tokens,
                }
                for t in self.tokenizers
            ],
        }

    def to_tables(self) -> dict[str, pa.Table]:
        infos = pa.table(
            {
                "order": pa.array(range(len(self.tokenizers)), pa.int32()),
                "name": pa.array([t.name for t in self.tokenizers], pa.string()),
                "kind": pa.array([t.kind for t in self.tokenizers], pa.string()),
                "chat_text": pa.array([t.chat_text for t in self.tokenizers], pa.string()),
                "chat_tokens": pa.array([t.chat_tokens for t in self.tokenizers], pa.int64()),
            }
        )
        return {"tokens": self.tokens_table(), "tokenizers": infos}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        rows = tables["tokens"].sort_by([("tokenizer", "ascending"), ("index", "ascending")]).to_pylist()
        # runs stored before the "tokenizers" table kept the per-tokenizer facts in the meta
        infos = (
            tables["tokenizers"].sort_by("order").to_pylist()
            if "tokenizers" in tables
            else meta["tokenizers"]
        )
        out = []
        for info in infos:
            mine = [r for r in rows if r["tokenizer"] == info["name"]]
            out.append(
                TokenizedText(
                    name=info["name"],
                    kind=info["kind"],
                    ids=[r["token_id"] for r in mine],
                    pieces=[r["piece"] for r in mine],
                    decoded=[r["decoded"] for r in mine],
                    starts=[r["start"] for r in mine],
                    ends=[r["end"] for r in mine],
                    byte_fallback=[r["byte_fallback"] for r in mine],
                    partial_utf8=[r["partial_utf8"] for r in mine],
                    special=[r["special"] for r in mine],
                    chat_text=info["chat_text"],
                    chat_tokens=info["chat_tokens"],
                )
            )
        return {"tokenizers": out}


@dataclass(frozen=True)
class TokenizerParams:
    """Which tokenizers to compare (embedded names, hub ids or local dirs), in order; the first is
    the baseline of the token premium. The names are the run's "model", so they are not part of
    the parameter key."""

    tokenizers: tuple[str, ...] = field(default=EMBEDDED_TOKENIZERS, metadata={"key": False})

    @classmethod
    def of(cls, names: Sequence[str]) -> TokenizerParams:
        """From user input: blank names dropped, the others stripped."""
        return cls(tuple(n.strip() for n in names if n and n.strip()))

    def validate(self) -> None:
        names = self.tokenizers
        if not names:
            raise InputError("tokenizers: choose at least one tokenizer")
        if len(names) > MAX_TOKENIZERS:
            raise InputError(f"tokenizers: at most {MAX_TOKENIZERS} side by side, got {len(names)}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(f"tokenizers: {', '.join(map(repr, twice))} listed twice")

    def to_json(self) -> dict[str, Any]:
        return params_json(self)


def validate_text(text: str) -> None:
    if text is None or not text.strip():
        raise InputError("the text is empty: type some text to tokenize")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"the text is {len(text)} characters long; the maximum is {MAX_TEXT_CHARS}")


def inspect(text: str, named: list[tuple[str, Any]]) -> TokenizerResult:
    t0 = time.perf_counter()
    toks = [tokenize(name, tok, text) for name, tok in named]
    notes = [
        "Token premium = a tokenizer's token count divided by the first tokenizer's, for the same text "
        "(special tokens the tokenizer adds included)."
    ]
    return TokenizerResult(text=text, tokenizers=toks, seconds=time.perf_counter() - t0, notes=notes)
