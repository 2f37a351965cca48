"""Dataset sweeps: one analysis over every row of a JSONL / CSV / Parquet file.

    rows.py       the dataset: reading, validating every row before anything runs
    analyses.py   per analysis (lens, attention, attribute, prune, vlm-eval): run one chunk of rows
                  with a loaded model -> long-form Arrow tables, plus the per-row "measures"
    shards.py     the output directory: manifest, atomic Parquet shards (resume skips done rows),
                  the aggregate (mean and 95% bootstrap interval per group / measure / x)
    executors.py  where chunks run: in this process, a local process pool, or Ray actors; every
                  worker loads the model once
    result.py     SweepResult (kind "sweep"): the aggregate and where the shards are, stored as a
                  run so the Runs tab lists it and the store exposes its shards as SQL views

The public entry point is `explorer.sweep` (explorer/api/sweep.py); the CLI is `explorer sweep`.
"""
