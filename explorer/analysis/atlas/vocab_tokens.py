"""Tokenizer analysis of a whole vocabulary (Land & Bartolo 2024, "Fishing for Magikarp", section 3.1).

For every token id: its raw bytes, whether it is a special token, whether its bytes are a partial
UTF-8 sequence, whether it round-trips (`encode(decode(id)) == [id]`), and whether any string we
try encodes to it ("reachable"). Reachability is tested, not proven: each token's decoded string
alone and inside a few contexts, and, for partial UTF-8 tokens, the complete characters whose
UTF-8 bytes contain the token's bytes.

Reference ("known unused") tokens for the embedding indicators come from the tokenizer, as in the
paper's registry: byte tokens for bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5-0xFF), rows
beyond the tokenizer's vocabulary, and placeholder tokens named unused/reserved ("[unused12]").
Tokenizers with none of those often carry added special tokens that the model never uses (code-data
markers such as "<file_sep>" inherited from another tokenizer): `unused_added_tokens` lists the added
tokens that are neither the model's BOS/EOS/PAD/UNK/... nor written by its chat template, for the
caller to confirm by prompting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from explorer.analysis.atlas.token_types import special_ids

CATEGORIES = ("ok", "special", "partial_utf8", "not_round_trip", "no_string")
NEVER_UTF8_BYTES = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])
CONTEXTS = (("", ""), (" ", ""), ("a", ""), ("", " a"), ("\n", "\n"))
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
PER_PREFIX = 40
WORDPIECE_CONTINUATION = "##"
_UNUSED_NAME = re.compile(r"^[<\[].*(unused|reserved|madeupword).*[>\]]$", re.IGNORECASE)


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table, inverted (character -> byte)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in str(getattr(backend, "decoder", ""))


def token_bytes(tokenizer: Any, token_id: int, byte_level: bool) -> bytes:
    """The raw bytes a token stands for (byte-level BPE, byte fallback, or its decoded text)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        return b""
    if byte_level:
        table = _byte_level_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
    m = _BYTE_FALLBACK.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return str(tokenizer.decode([int(token_id)])).encode("utf-8")


def is_partial_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@dataclass
class TokenizerAnalysis:
    """Per token id (n = rows of the model's vocabulary):

    decoded:      n strings (tokenizer.decode([id]); "" beyond the tokenizer)
    raw_hex:      n hex strings of the token's bytes
    category:     n of CATEGORIES
    round_trip:   (n,) bool
    partial_utf8: (n,) bool
    reachable:    (n,) bool, some tested string encodes to a sequence containing the id
    reference:    ids used as known-unused reference, and why (`reference_source`)
    """

    decoded: list[str]
    raw_hex: list[str]
    category: list[str]
    round_trip: np.ndarray
    partial_utf8: np.ndarray
    reachable: np.ndarray
    special: np.ndarray
    reference: list[int]
    reference_source: str


_CONT_SPREAD = (0x80, 0x88, 0x8F, 0x90, 0x9A, 0x9F, 0xA0, 0xA8, 0xAF, 0xB0, 0xB8, 0xBF)
_LEADS = {2: range(0xC2, 0xE0), 3: range(0xE0, 0xF0), 4: range(0xF0, 0xF5)}


def _valid_chars(candidates: list[bytes]) -> list[str]:
    out = []
    for raw in candidates:
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    if len(out) > PER_PREFIX:
        step = len(out) / PER_PREFIX
        out = [out[int(j * step)] for j in range(PER_PREFIX)]
    return out


def _fill(n: int) -> list[bytes]:
    """Every sequence of `n` continuation bytes drawn from a spread of values."""
    seqs = [b""]
    for _ in range(n):
        seqs = [s + bytes([c]) for s in seqs for c in _CONT_SPREAD]
    return seqs


@lru_cache(maxsize=4096)
def chars_starting(prefix: bytes) -> list[str]:
    """Complete characters whose UTF-8 encoding starts with `prefix` (a lead byte + continuations)."""
    lead = prefix[0]
    length = next((n for n, r in _LEADS.items() if lead in r), 0)
    if not length or len(prefix) >= length:
        return []
    return _valid_chars([prefix + tail for tail in _fill(length - len(prefix))])


@lru_cache(maxsize=4096)
def chars_ending(suffix: bytes) -> list[str]:
    """Complete characters whose UTF-8 encoding ends with `suffix` (continuation bytes only)."""
    cands = []
    for length, leads in _LEADS.items():
        need = length - 1 - len(suffix)
        if need < 0:
            continue
        cands += [bytes([lead]) + mid + suffix for lead in leads for mid in _fill(need)]
    return _valid_chars(cands)


def _completions(raw: bytes) -> list[str]:
    """Strings that contain `raw` (a partial UTF-8 sequence) inside complete characters."""
    head = 0
    while head < len(raw) and 0x80 <= raw[head] <= 0xBF:
        head += 1
    tail = len(raw)
    for cut in range(len(raw), head - 1, -1):
        try:
            raw[head:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        tail = cut
        break
    middle = raw[head:tail].decode("utf-8", errors="replace")
    lefts = chars_ending(raw[:head]) if head else [""]
    rights = chars_starting(raw[tail:]) if tail < len(raw) else [""]
    if head and tail < len(raw):
        lefts, rights = lefts[:6], rights[:6]
    return [left + middle + right for left in lefts for right in rights]


def encode_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Ids of each text without special tokens: the fast tokenizer's Rust batch encoder when there is
    one (the same ids, without transformers' per-text Python conversion; padding a backend may be set
    to add is dropped by its attention mask), else the tokenizer itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [
            [i for i, keep in zip(enc.ids, enc.attention_mask, strict=True) if keep]
            for enc in backend.encode_batch(texts, add_special_tokens=False)
        ]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]


def analyse_tokenizer(tokenizer: Any, n_rows: int) -> TokenizerAnalysis:
    """Categorise every id in 0..n_rows-1 (the model's vocabulary rows)."""
    n_tok = min(len(tokenizer), n_rows)
    specials = special_ids(tokenizer)
    byte_level = is_byte_level(tokenizer)
    decoded = [str(tokenizer.decode([i])) for i in range(n_tok)] + [""] * (n_rows - n_tok)
    raws = [token_bytes(tokenizer, i, byte_level) for i in range(n_tok)] + [b""] * (n_rows - n_tok)
    pieces = [str(p) for p in tokenizer.convert_ids_to_tokens(list(range(n_tok)))]
    encoded = encode_many(tokenizer, decoded[:n_tok])
    round_trip = np.zeros(n_rows, dtype=bool)
    reachable = np.zeros(n_rows, dtype=bool)
    for i, ids in enumerate(encoded):
        round_trip[i] = list(ids) == [i]
        reachable[list(ids)] = True
    partial = np.array([bool(r) and is_partial_utf8(r) for r in raws], dtype=bool)
    special = np.zeros(n_rows, dtype=bool)
    special[[i for i in specials if i < n_rows]] = True
    # tokens not yet seen: try contexts, and complete characters around partial UTF-8 bytes
    for contexts in (CONTEXTS[:1], CONTEXTS[1:]):  # the bare strings first, contexts for the rest
        todo = [i for i in range(n_tok) if not reachable[i] and not special[i]]
        texts: list[str] = []
        owners: list[int] = []
        for i in todo:
            if partial[i]:
                bases = _completions(raws[i])
            elif pieces[i].startswith(WORDPIECE_CONTINUATION):  # WordPiece "##ing": only inside a word
                bases = [p + pieces[i][len(WORDPIECE_CONTINUATION) :] for p in ("x", "q", "z", "play")]
            else:
                bases = [decoded[i]]
            for base in bases:
                for pre, post in contexts:
                    texts.append(pre + base + post)
                    owners.append(i)
        if texts:
            for i, ids in zip(owners, encode_many(tokenizer, texts), strict=True):
                if i in ids:
                    reachable[i] = True
    reachable[special] = True  # special tokens are reachable through their literal text
    category = []
    for i in range(n_rows):
        if i >= n_tok:
            category.append("no_string")
        elif special[i]:
            category.append("special")
        elif partial[i]:
            category.append("partial_utf8")
        elif not round_trip[i]:
            category.append("not_round_trip")
        else:
            category.append("ok")
    reference, source = reference_tokens(tokenizer, raws, n_tok, n_rows)
    return TokenizerAnalysis(
        decoded=decoded,
        raw_hex=[r.hex() for r in raws],
        category=category,
        round_trip=round_trip,
        partial_utf8=partial,
        reachable=reachable,
        special=special,
        reference=reference,
        reference_source=source,
    )


def unused_added_tokens(tokenizer: Any) -> list[int]:
    """Added (special) tokens the model has no declared use for: not one of its named special tokens
    (BOS, EOS, PAD, UNK, SEP, CLS, MASK) and not written by its chat template."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    named = set()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id",
                 "cls_token_id", "mask_token_id"):  # fmt: skip
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            named.add(value)
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):
        template = " ".join(str(t) for t in (template.values() if isinstance(template, dict) else template))
    out = []
    for i, tok in added.items():
        content = str(getattr(tok, "content", tok))
        if int(i) in named or not content.strip() or content in template:
            continue
        out.append(int(i))
    return sorted(out)


def reference_tokens(tokenizer: Any, raws: list[bytes], n_tok: int, n_rows: int) -> tuple[list[int], str]:
    """Known-unused ids, as in the paper's registry: never-UTF-8 byte tokens, rows beyond the
    tokenizer, and unused/reserved placeholder tokens."""
    ids: list[int] = []
    reasons: list[str] = []
    never = [i for i in range(n_tok) if len(raws[i]) == 1 and raws[i][0] in NEVER_UTF8_BYTES]
    if never:
        ids += never
        reasons.append(f"{len(never)} byte tokens that never occur in UTF-8 (0xC0, 0xC1, 0xF5-0xFF)")
    beyond = list(range(n_tok, n_rows))
    if beyond:
        ids += beyond
        reasons.append(f"{len(beyond)} embedding rows beyond the tokenizer's vocabulary")
    vocab = tokenizer.convert_ids_to_tokens(list(range(n_tok)))
    named = [i for i, piece in enumerate(vocab) if piece and _UNUSED_NAME.search(piece)]
    if named:
        ids += named
        reasons.append(f"{len(named)} tokens named unused/reserved")
    return sorted(set(ids)), "; ".join(reasons)
