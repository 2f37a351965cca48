"""Vocabulary health: under-trained and glitch tokens over a model's whole vocabulary.

Two detectors, each verified by prompting (`verify.py`):

1. Magikarp (Land & Bartolo 2024, "Fishing for Magikarp"): tokenizer analysis (`vocab_tokens.py`),
   then the indicator "cosine distance of the unembedding row from the mean of known-unused rows,
   after removing the first principal component" (low = looks unused) next to the input-embedding
   L2 norm; the `n_verify` lowest-indicator tokens that round-trip are verified.
2. GlitchHunter (Li et al. 2024, `glitchhunter.py`): Leiden communities of a k-NN token embedding
   graph, a binomial test on a verified sample of each, the kept communities' tokens form the next
   graph, until it stops changing; its flagged tokens are verified like Magikarp's candidates.

The precision of each detector (verified / checked) and their agreement are reported. A UMAP (cosine) of up to `map_points` unembedding rows (all
suspects, references and flagged tokens, plus a random sample of the rest) is the vocabulary atlas.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from explorer.analysis.atlas import verify as _verify
from explorer.analysis.atlas.glitchhunter import PCA_DIMS, HunterParams, RoundTrace, hunt
from explorer.analysis.atlas.projection import ProjectionParams, fit_umap
from explorer.analysis.atlas.vocab_tokens import analyse_tokenizer, unused_added_tokens
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.results import StoredFields, in_meta, in_table, register_result

FALLBACK_REFERENCE = 20
MAX_ADDED_REFERENCE = 256  # unused added tokens confirmed by prompting (at most this many)


@dataclass(frozen=True)
class VocabParams:
    n_verify: int = 300
    map_points: int = 4000  # up to 4,096 points UMAP finds neighbours exactly, without the descent kernels
    gh_neighbors: int = 10
    gh_resolution: float = 20.0
    gh_sample: int = 3
    steps: int = 3
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.n_verify <= 5000:
            raise InputError(f"n_verify must be between 1 and 5000, got {self.n_verify}")
        if not 0 <= self.map_points <= 60_000:
            raise InputError(f"map_points must be between 0 (no map) and 60000, got {self.map_points}")
        if not 2 <= self.gh_neighbors <= 100:
            raise InputError(f"gh_neighbors must be between 2 and 100, got {self.gh_neighbors}")
        if not 0.01 <= self.gh_resolution <= 1000:
            raise InputError(f"gh_resolution must be between 0.01 and 1000, got {self.gh_resolution}")
        if not 2 <= self.gh_sample <= 20:
            raise InputError(f"gh_sample must be between 2 and 20, got {self.gh_sample}")
        if not 1 <= self.steps <= 10:
            raise InputError(f"steps must be between 1 and 10, got {self.steps}")

    def hunter(self) -> HunterParams:
        return HunterParams(
            neighbors=self.gh_neighbors, resolution=self.gh_resolution, sample=self.gh_sample, seed=self.seed
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "n_verify": self.n_verify,
            "map_points": self.map_points,
            "gh_neighbors": self.gh_neighbors,
            "gh_resolution": self.gh_resolution,
            "gh_sample": self.gh_sample,
            "steps": self.steps,
            "seed": self.seed,
        }


TOKEN_COLUMNS = (
    "token_id", "token", "raw_hex", "category", "round_trip", "partial_utf8", "reachable", "reference",
    "indicator", "cosine_distance", "embed_norm", "candidate_rank", "max_prob", "status", "output",
    "gh_cluster", "gh_flag", "gh_screen_prob", "x", "y",
)  # fmt: skip


@register_result
@dataclass
class VocabHealthResult(StoredFields):
    """Per vocabulary row (n = model vocab): every column of TOKEN_COLUMNS in `columns` (numpy arrays
    or lists of n). `summary`: counts, agreement, timings; `notes`: deviations and caveats."""

    kind: ClassVar[str] = "vocab_health"

    model: str = in_meta()
    columns: dict[str, Any] = in_table()
    summary: dict[str, Any] = in_meta()
    params: dict[str, Any] = in_meta()
    seconds: float = in_meta(decode=float)
    notes: list[str] = in_meta(default_factory=list)
    run_id: str | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.columns["token_id"])

    def table(self) -> pa.Table:
        return pa.table({name: self.columns[name] for name in TOKEN_COLUMNS})

    def suspects(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Verified candidates, lowest indicator first (Magikarp's table)."""
        rank = np.asarray(self.columns["candidate_rank"])
        order = np.flatnonzero(rank >= 0)
        order = order[np.argsort(rank[order], kind="stable")]
        if limit is not None:
            order = order[:limit]
        keys = ("token_id", "token", "indicator", "embed_norm", "max_prob", "status", "output", "gh_flag")
        return [{k: _py(self.columns[k][i]) for k in keys} for i in order]

    def json_views(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens, "suspects": self.suspects()}

    def to_tables(self) -> dict[str, pa.Table]:
        return {"tokens": self.table()}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        t = tables["tokens"].sort_by("token_id")
        columns: dict[str, Any] = {}
        for name in TOKEN_COLUMNS:
            col = t[name]
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                columns[name] = col.to_pylist()
            else:
                columns[name] = col.to_numpy(zero_copy_only=False)
        return {"columns": columns}


def _py(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def remove_first_pc(mat: np.ndarray) -> np.ndarray:
    """Rows minus their projection on the first principal component of the (centred) matrix."""
    centred = mat - mat.mean(axis=0, keepdims=True)
    # the first PC is the top eigenvector of the d x d scatter matrix (cheaper than an SVD of V x d)
    cov = centred.T @ centred
    _, vecs = np.linalg.eigh(cov)
    pc = vecs[:, -1]
    return mat - np.outer(mat @ pc, pc)


def cosine_distance(mat: np.ndarray, v: np.ndarray) -> np.ndarray:
    return 1.0 - (mat @ v) / np.clip(np.linalg.norm(mat, axis=1) * np.linalg.norm(v), 1e-6, None)


Check = dict[int, tuple[float, list[int], str]]


def _confirm(verifier: _verify.Verifier, ids: list[int], check: Check) -> list[int]:
    """The ids the model cannot repeat (verified by prompting); every result goes into `check`."""
    best, outs, names = verifier.verify(ids)
    for tid, p, out, name in zip(ids, best.tolist(), outs, names, strict=True):
        check[tid] = (p, out, name)
    return [tid for tid, p in zip(ids, best.tolist(), strict=True) if _verify.is_verified(p)]


def _reference(
    lm: Any, tok: Any, embed_norm: np.ndarray, verifier: _verify.Verifier, notes: list[str]
) -> tuple[np.ndarray, str, Check]:
    """Known-unused reference ids (the paper's section 2.2), where they come from, and the
    verification results of references that had to be confirmed by prompting.

    1. From the tokenizer, as in the paper's registry (never-UTF-8 bytes, rows beyond the tokenizer,
       tokens named unused/reserved): taken as they are.
    2. Else added special tokens with no declared use (`unused_added_tokens`), kept if the model
       cannot repeat them: the paper's "reserved tokens never used in training", confirmed the way
       the paper's registry confirmed StarCoder2's references (candidates found by another indicator,
       then checked).
    3. Else the smallest-norm tokens, kept if they verify (a deviation, stated in the notes)."""
    n_rows = embed_norm.shape[0]
    reference = np.asarray(tok.reference, dtype=np.int64)
    if reference.size:
        return reference, str(tok.reference_source), {}
    check: Check = {}
    added = [i for i in unused_added_tokens(lm.tokenizer) if i < n_rows][:MAX_ADDED_REFERENCE]
    if added:
        kept = _confirm(verifier, added, check)
        dropped = [tok.decoded[i] for i in added if i not in set(kept)]
        if kept:
            source = (
                f"{len(kept)} of the tokenizer's {len(added)} added special tokens with no declared use (not BOS, "
                "EOS, PAD or UNK, not written by the chat template) that the model cannot repeat (verified, max "
                f"probability < {_verify.VERIFIED})"
                + (f"; dropped as the model repeats them: {dropped}" if dropped else "")
            )
            return np.asarray(kept, dtype=np.int64), source, check
    candidates_pool = np.flatnonzero(np.array([c == "ok" for c in tok.category]))
    fallback = candidates_pool[np.argsort(embed_norm[candidates_pool], kind="stable")[:FALLBACK_REFERENCE]]
    kept = _confirm(verifier, fallback.tolist(), check)
    if kept:
        source = (
            f"fallback: {len(kept)} of the {FALLBACK_REFERENCE} tokens with the smallest input-embedding norm that "
            "the model cannot repeat"
        )
        reference = np.asarray(kept, dtype=np.int64)
    else:
        source = (
            f"fallback: the {FALLBACK_REFERENCE} tokens with the smallest input-embedding norm (none of them "
            "verifies: the indicator is unreliable here)"
        )
        reference = fallback
    notes.append(
        "No known-unused tokens (never-UTF-8 bytes, rows beyond the tokenizer, unused/reserved placeholders, "
        "unused added tokens) exist here, so the reference is " + source + " (a deviation: the paper uses "
        "known-unused tokens)."
    )
    return reference, source, check


def _where_fell(
    trace: list[RoundTrace], ids: np.ndarray, hp: HunterParams, decoded: list[str]
) -> list[dict[str, Any]]:
    """GlitchHunter's first-round communities that hold the Magikarp-verified `ids` (most first), with
    their sample and test, tokens as text (see `RoundTrace.where`)."""
    if not trace or ids.size == 0:
        return []
    out = trace[0].where(ids, hp)
    held = set(ids.tolist())
    for entry in out:
        members = trace[0].tokens[trace[0].labels == entry["community"]]
        entry["tokens"] = [decoded[i] for i in members.tolist() if i in held]
        entry["sample"] = [decoded[i] for i in entry["sample"]]
    return out


def _where_fell_note(where_fell: list[dict[str, Any]], n_verified: int, hp: HunterParams) -> str:
    top = where_fell[0]
    n = len(top["sample"])
    return (
        f"Where Magikarp's {n_verified} verified tokens fell in GlitchHunter's first graph: {len(where_fell)} "
        f"communities; the largest share, {top['holds']}, in one community of {top['size']} tokens, whose random "
        f"sample of {n} ({', '.join(repr(t) for t in top['sample'])}) held {top['glitchy_in_sample']} glitchy "
        f"(binomial p = {top['p_value']:.3g}; kept needs {top['glitchy_needed']} of {n}: "
        f"{'kept' if top['kept'] else 'not kept'}). If those {top['holds']} are its only glitch tokens, a sample "
        f"of {n} passes the test with probability {top['pass_chance']:.2f}."
    )


def vocab_health(
    lm: Any,
    *,
    params: VocabParams,
    cache_dir: Path | None = None,
    progress: ProgressFn | None = None,
) -> VocabHealthResult:
    """Run both detectors over the whole vocabulary of `lm` and verify their suspects."""
    t0, c0 = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds of this process (all threads) per stage
    say = progress or (lambda f, m: None)
    notes: list[str] = []
    unembed = lm.unembed_module().weight.detach().float().cpu().numpy()  # (V, d)
    embed = lm.embed_module().weight.detach().float().cpu().numpy()  # (V, d)
    n_rows = unembed.shape[0]
    say(0.02, f"Tokenizer analysis of {n_rows} tokens")
    tok = analyse_tokenizer(lm.tokenizer, n_rows)
    timings["tokenizer_s"] = time.perf_counter() - t0
    cpu["tokenizer_s"] = time.process_time() - c0

    t1, c1 = time.perf_counter(), time.process_time()
    embed_norm = np.linalg.norm(embed, axis=1)
    ok = np.array([c == "ok" for c in tok.category])
    placeholder = _verify.choose_placeholder(lm.tokenizer, tok.decoded, ok)
    templates = _verify.build_templates(lm.tokenizer, placeholder, list(_verify.TEMPLATES))
    if len(templates) < len(_verify.TEMPLATES):
        notes.append(f"Verification templates usable with this tokenizer: {[t.name for t in templates]}.")
    verifier = _verify.Verifier(lm, templates, steps=params.steps)
    reference, reference_source, reference_check = _reference(lm, tok, embed_norm, verifier, notes)
    timings["reference_s"] = time.perf_counter() - t1
    cpu["reference_s"] = time.process_time() - c1
    t1, c1 = time.perf_counter(), time.process_time()
    no_pc = remove_first_pc(unembed.astype(np.float64))
    indicator = cosine_distance(no_pc, no_pc[reference].mean(axis=0))
    plain = cosine_distance(unembed.astype(np.float64), unembed[reference].mean(axis=0).astype(np.float64))
    timings["indicators_s"] = time.perf_counter() - t1
    cpu["indicators_s"] = time.process_time() - c1

    # Magikarp candidates: round-tripping, non-special, not in the reference set; lowest indicator first
    eligible = ok.copy()
    eligible[reference] = False
    pool = np.flatnonzero(eligible)
    candidates = pool[np.argsort(indicator[pool], kind="stable")[: params.n_verify]]
    candidate_rank = np.full(n_rows, -1, dtype=np.int64)
    candidate_rank[candidates] = np.arange(candidates.size)

    t1, c1 = time.perf_counter(), time.process_time()
    max_prob = np.full(n_rows, np.nan)
    output = [""] * n_rows
    best_template = [""] * n_rows

    def verify_full(ids: np.ndarray, frac0: float, frac1: float, label: str) -> None:
        if ids.size == 0:
            return

        def step(frac: float, message: str) -> None:
            say(frac0 + (frac1 - frac0) * frac, f"{label}: {message}")

        best, outs, names = verifier.verify(ids.tolist(), progress=step)
        max_prob[ids] = best
        for k, tid in enumerate(ids.tolist()):
            output[tid] = str(lm.tokenizer.decode(outs[k]))
            best_template[tid] = names[k]

    for tid, (p, out, name) in reference_check.items():
        max_prob[tid], output[tid], best_template[tid] = p, str(lm.tokenizer.decode(out)), name
    verify_full(candidates, 0.1, 0.5, f"Verifying {candidates.size} Magikarp candidates")
    timings["verify_magikarp_s"] = time.perf_counter() - t1
    cpu["verify_magikarp_s"] = time.process_time() - c1

    t1, c1 = time.perf_counter(), time.process_time()
    say(0.5, "GlitchHunter-style clustering")
    rng = np.random.default_rng(params.seed)
    trace: list[RoundTrace] = []
    flagged, gh_cluster, gh_screen, rounds = hunt(
        embed,
        pool,
        verifier.screen,
        _verify.is_verified,
        params.hunter(),
        progress=lambda m: say(0.6, f"GlitchHunter: {m}"),
        trace=trace,
    )
    gh_flag = np.zeros(n_rows, dtype=bool)
    gh_flag[flagged] = True
    timings["glitchhunter_s"] = time.perf_counter() - t1
    cpu["glitchhunter_s"] = time.process_time() - c1

    t1, c1 = time.perf_counter(), time.process_time()
    unverified = flagged[np.isnan(max_prob[flagged])]
    check = unverified[: params.n_verify]
    verify_full(check, 0.7, 0.85, f"Verifying {check.size} GlitchHunter tokens")
    timings["verify_glitchhunter_s"] = time.perf_counter() - t1
    cpu["verify_glitchhunter_s"] = time.process_time() - c1

    verified = np.flatnonzero(~np.isnan(max_prob) & (max_prob < _verify.VERIFIED))
    mk_verified = set(verified[candidate_rank[verified] >= 0].tolist())
    gh_set = set(flagged.tolist())
    gh_checked = [i for i in flagged.tolist() if not np.isnan(max_prob[i])]
    gh_verified = {i for i in gh_checked if _verify.is_verified(max_prob[i])}
    union = mk_verified | gh_verified
    mk_set = set(candidates.tolist())
    where_fell = _where_fell(
        trace, np.array(sorted(mk_verified), dtype=np.int64), params.hunter(), tok.decoded
    )
    statuses = ["" if np.isnan(p) else _verify.status(float(p)) for p in max_prob]

    xs = np.full(n_rows, np.nan, dtype=np.float32)
    ys = np.full(n_rows, np.nan, dtype=np.float32)
    if params.map_points > 0:
        t1, c1 = time.perf_counter(), time.process_time()
        say(0.85, "Vocabulary atlas (UMAP)")
        must = np.unique(np.concatenate([candidates, reference, flagged[: params.map_points // 2]]))
        rest = np.setdiff1d(np.arange(n_rows), must)
        fill = max(0, min(rest.size, params.map_points - must.size))
        chosen = np.concatenate([must, rng.choice(rest, size=fill, replace=False)]) if fill else must
        coords, _ = fit_umap(no_pc[chosen].astype(np.float32), ProjectionParams(seed=params.seed), cache_dir)
        xs[chosen], ys[chosen] = coords[:, 0], coords[:, 1]
        timings["map_s"] = time.perf_counter() - t1
        cpu["map_s"] = time.process_time() - c1

    counts = {
        c: int(sum(1 for x in tok.category if x == c))
        for c in ("ok", "special", "partial_utf8", "not_round_trip", "no_string")
    }
    summary = {
        "n_tokens": n_rows,
        "tokenizer": {
            **counts,
            "unreachable": int((~tok.reachable).sum()),
            "not_round_trip_total": int((~tok.round_trip[: len(lm.tokenizer)]).sum()),
        },
        "reference": {
            "n": int(reference.size),
            "source": reference_source,
            "tokens": [tok.decoded[i] for i in reference[:20].tolist()],
            "checked_by_prompting": len(reference_check),
        },  # fmt: skip
        "indicator": "cosine distance of the unembedding row from the mean reference row, first PC removed",
        "placeholder": tok.decoded[placeholder],
        "magikarp": {
            "candidates": int(candidates.size),
            "verified": len(mk_verified),
            "precision": (len(mk_verified) / candidates.size) if candidates.size else None,
            "strong_verified": int(sum(1 for i in candidates if statuses[i] == "strong_verified")),
            "weak_verified": int(sum(1 for i in candidates if statuses[i] == "weak_verified")),
            "indicator_threshold": float(indicator[candidates[-1]]) if candidates.size else None,
        },
        "glitchhunter": {
            "flagged": len(gh_set),
            "checked": len(gh_checked),
            "verified": len(gh_verified),
            "precision": (len(gh_verified) / len(gh_checked)) if gh_checked else None,
            "params": {**asdict(params.hunter()), "pca_dims": PCA_DIMS},
            "rounds": rounds,
            "magikarp_verified_in_first_graph": where_fell,
        },  # fmt: skip
        "agreement": {
            "both": len(mk_verified & gh_verified),
            "magikarp_only": len(mk_verified - gh_verified),
            "glitchhunter_only": len(gh_verified - mk_verified),
            "jaccard": (len(mk_verified & gh_verified) / len(union)) if union else None,
            "magikarp_verified_flagged_by_glitchhunter": len(mk_verified & gh_set),
            "overlap": (len(mk_verified & gh_verified) / min(len(mk_verified), len(gh_verified)))
            if mk_verified and gh_verified
            else None,
            "flagged_both": len(mk_set & gh_set),
            "jaccard_flagged": (len(mk_set & gh_set) / len(mk_set | gh_set)) if mk_set | gh_set else None,
        },
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "prompts_run": verifier.probed,
    }
    notes.append(
        "Verification prompts: the paper's three templates as plain text (no chat template, as in the paper's "
        f"code) with fewer repetitions ({_verify.REPETITIONS['repeats']} and {_verify.REPETITIONS['input_output']} "
        f"instead of {_verify.PAPER_REPETITIONS['repeats']} and {_verify.PAPER_REPETITIONS['input_output']}); the "
        f"highest probability of the token over {params.steps} greedy steps, maximised over the templates; verified "
        f"= max probability < {_verify.VERIFIED} (the paper's threshold; strongly < {_verify.STRONG_VERIFY}). "
        f"Templates run cheapest first and a token stops once one gives it more than {_verify.WEAK_REJECT} (its "
        "verdict is then final; the recorded maximum is a lower bound)."
    )
    notes.append(
        "GlitchHunter (Li et al. 2024): Leiden communities (leidenalg, resolution "
        f"{params.gh_resolution:g}) of the token embedding graph (each token linked to its {params.gh_neighbors} "
        "nearest neighbours by cosine similarity of the input embeddings), a one-sided binomial test per "
        f"community on {params.gh_sample} verified tokens (kept when 'glitch rate ≤ {params.hunter().p0:g}' is "
        f"rejected at α = {params.hunter().alpha:g}), the kept tokens form the next graph until it stops changing. "
        f"Deviations: the first, whole-vocabulary graph finds neighbours in a {PCA_DIMS}-dimensional PCA of the "
        "unit embeddings (smaller graphs use every dimension); the glitch check is the Magikarp repetition probe "
        "above instead of the paper's repetition/spelling/length tasks; k, the resolution, the sample size, p0 "
        "and α are our choices."
    )
    if where_fell:
        notes.append(_where_fell_note(where_fell, len(mk_verified), params.hunter()))
    if params.map_points:
        notes.append(
            f"Vocabulary atlas: UMAP (cosine) of {min(n_rows, params.map_points)} unembedding rows with the first "
            "PC removed: every candidate, reference and flagged token plus a random sample of the rest."
        )
    columns: dict[str, Any] = {
        "token_id": np.arange(n_rows, dtype=np.int64),
        "token": tok.decoded,
        "raw_hex": tok.raw_hex,
        "category": tok.category,
        "round_trip": tok.round_trip,
        "partial_utf8": tok.partial_utf8,
        "reachable": tok.reachable,
        "reference": np.isin(np.arange(n_rows), reference),
        "indicator": indicator.astype(np.float32),
        "cosine_distance": plain.astype(np.float32),
        "embed_norm": embed_norm.astype(np.float32),
        "candidate_rank": candidate_rank,
        "max_prob": max_prob,
        "status": statuses,
        "output": output,
        "gh_cluster": gh_cluster,
        "gh_flag": gh_flag,
        "gh_screen_prob": gh_screen,
        "x": xs,
        "y": ys,
    }
    return VocabHealthResult(
        model=lm.model_id,
        columns=columns,
        summary=summary,
        params=params.to_json(),
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
