"""kill -9 a writer at random points: the store always reopens and holds no partial run or batch."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from explorer import api
from explorer.store import Store

WRITER = """
import pickle, sys
from explorer.store import PendingRun, Store
result = pickle.load(open(sys.argv[2], "rb"))
store = Store(sys.argv[1])
i = 0
while True:
    batch = [PendingRun(result, "tiny-llama", "w", f"{sys.argv[3]}batch{i}-{j}", {"j": j}, 0.1) for j in range(3)]
    store.save_many(batch)  # one transaction of three runs, as `--method all` writes
    if i == 0:
        print("ready", flush=True)  # the tables exist: every kill from now on lands among writes
    i += 1
"""


def test_kill_9_mid_write_leaves_no_partial_run(tiny_llama, tmp_path: Path) -> None:
    result = api.logit_lens(
        tiny_llama, "a long enough prompt to make every write take a while " * 4, db=False
    )
    blob = tmp_path / "result.pkl"
    blob.write_bytes(pickle.dumps(result))
    db = tmp_path / "fault.duckdb"
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for trial in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(blob), f"t{trial}"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = Store(db)  # always reopens
        runs = store.list_runs(limit=100_000)
        batches = Counter(r.prompt.split("-")[0] for r in runs)
        assert all(n == 3 for n in batches.values()), batches  # whole batches only
        with store.connect() as cur:
            expected = {name: table.num_rows for name, table in result.to_tables().items()}
            for name, rows in expected.items():
                counts = dict(
                    cur.execute(f"SELECT run_id, count(*) FROM lens_{name} GROUP BY run_id").fetchall()
                )
                assert set(counts) == {r.run_id for r in runs}  # no orphan rows, no run without rows
                assert all(n == rows for n in counts.values())  # no half-written table
        store.close()
