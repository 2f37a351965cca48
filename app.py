"""Launch Token Explorer: `python app.py [--host H] [--port P] [--model NAME]`.

Builds the Gradio app from settings (EXPLORER_* environment variables, then these flags)
and serves it. On a Hugging Face Space set EXPLORER_HOST=0.0.0.0 (the Dockerfile does).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    parser = argparse.ArgumentParser(description="Launch the Token Explorer web app.")
    parser.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1, $EXPLORER_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860, $EXPLORER_PORT)")
    parser.add_argument("--model", default=None, help="default model (default smollm2-135m, $EXPLORER_MODEL)")
    parser.add_argument("--db", default=None, help="DuckDB run store (default cache/explorer.duckdb)")
    parser.add_argument("--no-warmup", action="store_true", help="do not load the default model at start")
    args = parser.parse_args()

    from explorer.config import Settings
    from explorer.ui.app import launch

    settings = Settings.from_env(host=args.host, port=args.port, default_model=args.model, db_path=args.db)
    if not args.no_warmup:
        from explorer.analysis.logit_lens import logit_lens
        from explorer.backends.language import load_model

        print(f"Loading {settings.default_model} (the first run converts the embedded weights, ~20 s)...")
        lm = load_model(settings.default_model, settings=settings)
        # compile the fused lens read-out now rather than on the first user request (not stored)
        logit_lens(lm, "Warm-up.", top_k=1)
    print(f"Token Explorer on http://{settings.host}:{settings.port}")
    launch(settings)


if __name__ == "__main__":
    main()
