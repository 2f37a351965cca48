"""Load test: N concurrent gradio_client users against a running Token Explorer app.

Each user sends `--requests` logit-lens requests (distinct prompts, so each one computes, plus a
repeat that the store serves) and one read-only SQL query, through the same API the browser uses.
Reports errors (by message), "queue full" refusals, p50/p95 latency and the server's resident
memory before and after (read from /proc when `--pid` is given).

Only talks to an app on this machine (127.0.0.1 / localhost): it is a load generator, and must
never be pointed at somebody else's server. Bounded: at most 64 users x 20 requests.

Run: `python app.py --port 7861 &` then
     `.venv/bin/python bench/load.py --url http://127.0.0.1:7861/ --users 20 --pid $(pgrep -f "app.py --port 7861")`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MAX_USERS = 64
MAX_REQUESTS = 20
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of `pid` in MB (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def user(url: str, index: int, requests: int, model: str, out: list[dict[str, Any]]) -> None:
    from gradio_client import Client

    t0 = time.perf_counter()
    try:  # a client that cannot even connect is an error of this user, not a crash of the bench
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 300})
    except Exception as exc:  # noqa: BLE001
        error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        out.append({"user": index, "api": "connect", "seconds": time.perf_counter() - t0, "error": error})
        return
    calls: list[tuple[str, tuple[Any, ...]]] = []
    for r in range(requests):
        prompt = f"User {index} asks question {r}: the capital of France is"
        # the Lens tab's inputs: image, prompt, targets, model, top-k, generate, sample, temperature,
        # seed, metric, role, dtype
        args = (None, prompt, " Paris", model, 5, 0, False, 1.0, 0, "prob", "final_top1", "auto")
        calls.append(("/logit_lens", args))
    calls.append(("/logit_lens", calls[0][1]))  # a repeat: served from the store
    calls.append(("/query_runs", ("SELECT kind, count(*) AS n FROM runs GROUP BY kind",)))
    for api_name, args in calls:
        t0 = time.perf_counter()
        try:
            client.predict(*args, api_name=api_name)
            error = None
        except Exception as exc:  # noqa: BLE001 - the bench records every failure by message
            error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        out.append({"user": index, "api": api_name, "seconds": time.perf_counter() - t0, "error": error})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/", help="the running app (this machine only)")
    parser.add_argument(
        "--users", type=int, default=20, help=f"concurrent users (default 20, at most {MAX_USERS})"
    )
    parser.add_argument(
        "--requests", type=int, default=3, help=f"lens requests per user (at most {MAX_REQUESTS})"
    )
    parser.add_argument("--model", default="smollm2-135m", help="model field sent by every user")
    parser.add_argument("--pid", type=int, default=None, help="the app's process id, to report its memory")
    args = parser.parse_args()
    host = urlparse(args.url).hostname or ""
    if host not in LOCAL_HOSTS:
        sys.exit(f"bench/load.py: error: only an app on this machine (127.0.0.1) may be loaded, not {host!r}")
    if not 1 <= args.users <= MAX_USERS or not 1 <= args.requests <= MAX_REQUESTS:
        sys.exit(f"bench/load.py: error: 1..{MAX_USERS} users and 1..{MAX_REQUESTS} requests per user")

    rss_before = rss_mb(args.pid)
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=user, args=(args.url, i, args.requests, args.model, results))
        for i in range(args.users)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sorted(r["seconds"] for r in results if r["error"] is None)
    errors = Counter(r["error"] for r in results if r["error"] is not None)

    def pct(q: float) -> float | None:
        return round(ok[min(len(ok) - 1, int(q * len(ok)))], 3) if ok else None

    print(
        json.dumps(
            {
                "users": args.users,
                "requests": len(results),
                "ok": len(ok),
                "errors": sum(errors.values()),
                "queue_full": sum(n for e, n in errors.items() if "Queue is full" in (e or "")),
                "error_messages": dict(errors.most_common(5)),
                "p50_s": pct(0.5),
                "p95_s": pct(0.95),
                "mean_s": round(statistics.fmean(ok), 3) if ok else None,
                "wall_s": round(wall, 2),
                "rss_mb_before": rss_before,
                "rss_mb_after": rss_mb(args.pid),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
