"""Settings: defaults <- EXPLORER_* environment variables <- explicit overrides (CLI flags).

Nothing here is a module-level mutable global: code asks for `Settings.from_env()` (or is
handed a Settings) and passes paths down explicitly.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_VISION_MODEL = "dinov2-small-focus"


_LIMIT_VARIABLES: tuple[tuple[str, str, type], ...] = (
    ("sql_timeout_s", "EXPLORER_SQL_TIMEOUT_S", float),
    ("sql_max_cell_chars", "EXPLORER_SQL_MAX_CELL_CHARS", int),
    ("sql_max_response_bytes", "EXPLORER_SQL_MAX_RESPONSE_BYTES", int),
    ("store_lock_timeout_s", "EXPLORER_STORE_LOCK_TIMEOUT_S", float),
    ("queue_max_size", "EXPLORER_QUEUE_MAX_SIZE", int),
    ("session_ttl_s", "EXPLORER_SESSION_TTL_S", int),
    ("temp_file_ttl_s", "EXPLORER_TEMP_FILE_TTL_S", int),
    ("pruning_batch_mb", "EXPLORER_PRUNING_BATCH_MB", float),
)


DEVICE_MAPS = ("none", "auto")


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Paths are absolute after `from_env`."""

    cache_dir: Path = PROJECT_ROOT / "cache"
    db_path: Path | None = None  # default: <cache_dir>/explorer.duckdb
    default_model: str = DEFAULT_MODEL
    default_vision_model: str = DEFAULT_VISION_MODEL
    dtype: str = "auto"  # weights' dtype: auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16
    # "auto": hub LMs / VLMs load with accelerate's device_map="auto" when CUDA devices are present,
    # so a model larger than one GPU is split across the node's GPUs (and CPU RAM); "none": one device
    device_map: str = "none"
    max_prompt_tokens: int = 4096
    # Attention runs of at most this many tokens store every head's full matrix (30 layers x 9
    # heads x 256^2 = 17.7M weights for SmolLM2); longer prompts store block-aggregated matrices,
    # exact per-head statistics and top-k keys per query (see analysis.attention.streamed_attention).
    attention_full_tokens: int = 256
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    host: str = "127.0.0.1"
    port: int = 7860
    # hosting limits (see README "Hosting safely")
    max_prompt_chars_per_token: int = 32  # refuse longer text by characters before tokenising
    sql_timeout_s: float = 10.0
    sql_max_cell_chars: int = 10_000
    sql_max_response_bytes: int = 5 * 1024 * 1024
    store_lock_timeout_s: float = 30.0  # wait this long for another process's hold on the store
    queue_max_size: int = 64
    session_ttl_s: int = 3600
    temp_file_ttl_s: int = 3600
    # memory budget of one batched prefill in the text-pruning sweep (rows of a keep ratio are
    # split into batches that fit; at 4,096 tokens one SmolLM2 row alone needs about 1.4 GB)
    pruning_batch_mb: float = 1024.0

    @property
    def max_prompt_chars(self) -> int:
        """Longest prompt accepted before tokenising (a token is rarely longer than this many chars)."""
        return self.max_prompt_tokens * self.max_prompt_chars_per_token

    @property
    def database(self) -> Path:
        return self.db_path if self.db_path is not None else self.cache_dir / "explorer.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def exports_dir(self) -> Path:
        return self.cache_dir / "exports"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from EXPLORER_* variables, then apply non-None overrides."""
        env = os.environ
        values: dict[str, Any] = {}
        if "EXPLORER_CACHE_DIR" in env:
            values["cache_dir"] = Path(env["EXPLORER_CACHE_DIR"]).expanduser().resolve()
        if "EXPLORER_DB" in env:
            values["db_path"] = Path(env["EXPLORER_DB"]).expanduser().resolve()
        if "EXPLORER_MODEL" in env:
            values["default_model"] = env["EXPLORER_MODEL"]
        if "EXPLORER_DTYPE" in env:
            values["dtype"] = env["EXPLORER_DTYPE"]
        if "EXPLORER_DEVICE_MAP" in env:
            values["device_map"] = env["EXPLORER_DEVICE_MAP"].strip().lower()
        if "EXPLORER_MAX_PROMPT_TOKENS" in env:
            values["max_prompt_tokens"] = int(env["EXPLORER_MAX_PROMPT_TOKENS"])
        if "EXPLORER_ATTENTION_FULL_TOKENS" in env:
            values["attention_full_tokens"] = int(env["EXPLORER_ATTENTION_FULL_TOKENS"])
        if "EXPLORER_MAX_IMAGE_BYTES" in env:
            values["max_image_bytes"] = int(env["EXPLORER_MAX_IMAGE_BYTES"])
        for key, var, kind in _LIMIT_VARIABLES:
            if var in env:
                try:
                    values[key] = kind(env[var])
                except ValueError:
                    raise ValueError(f"{var}={env[var]!r} is not a valid {kind.__name__}") from None
        if "EXPLORER_HOST" in env:
            values["host"] = env["EXPLORER_HOST"]
        if "EXPLORER_PORT" in env:
            values["port"] = int(env["EXPLORER_PORT"])
        for key, value in overrides.items():
            if value is not None:
                if key in ("cache_dir", "db_path"):
                    value = Path(value).expanduser().resolve()
                values[key] = value
        if values.get("device_map", "none") not in DEVICE_MAPS:
            raise ValueError(
                f"device_map must be one of {', '.join(DEVICE_MAPS)} (got {values['device_map']!r}; "
                "EXPLORER_DEVICE_MAP or --device-map)"
            )
        return dataclasses.replace(cls(), **values)
