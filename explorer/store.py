"""DuckDB run store: one file, short-lived connections, a cursor per request.

Schema
------
runs(run_id, created, kind, model_id, weight_hash, prompt, params JSON, meta JSON,
     duration_s, status, cache_key)
<kind>_<table>(run_id, ...)   long-form result tables, created on first use from the
                              Arrow schema the result class produces.

A run is written in one transaction (runs row + all its tables) so a failure leaves
nothing behind. Inserts go through Arrow, never row by row. The same
(kind, model, weights, prompt, params) is found again by `cache_key` and served without
recomputation.

Two processes (the app and a CLI beside it) share the file under DuckDB's single-writer
rule: a process holds the file only while it has requests in flight (one connection shared by
its concurrent requests, closed when the last one finishes) and waits with backoff, up to
`lock_timeout_s`, while another process holds it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from explorer.results import RESULT_KINDS, StoredResult

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_OPEN: dict[Path, Store] = {}
_OPEN_LOCK = threading.Lock()
_SCHEMA = """
    CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY,
        created TIMESTAMP,
        kind VARCHAR,
        model_id VARCHAR,
        weight_hash VARCHAR,
        prompt VARCHAR,
        params JSON,
        meta JSON,
        duration_s DOUBLE,
        status VARCHAR,
        cache_key VARCHAR
    )
"""


def cache_key(kind: str, model_id: str, weight_hash: str, prompt: str, params: dict[str, Any]) -> str:
    """Stable hash of everything that determines a result."""
    blob = json.dumps([kind, model_id, weight_hash, prompt, params], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _add_new_columns(cur: duckdb.DuckDBPyConnection, table: str) -> None:
    """Add to `table` the columns of the registered `incoming` relation it does not have yet (a
    result class that gained a field), so stores written by older versions keep accepting runs;
    their old rows read NULL there."""
    have = {
        str(r[0])
        for r in cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
    }
    for name, dtype, *_ in cur.execute("DESCRIBE SELECT * FROM incoming").fetchall():
        if name not in have:
            cur.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {dtype}')


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    created: str
    kind: str
    model_id: str
    weight_hash: str
    prompt: str
    params: dict[str, Any]
    duration_s: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "created": self.created,
            "kind": self.kind,
            "model": self.model_id,
            "weight_hash": self.weight_hash,
            "prompt": self.prompt,
            "params": self.params,
            "duration_s": self.duration_s,
            "status": self.status,
        }


@dataclass(frozen=True)
class PendingRun:
    """A computed result waiting to be written (see `Store.save_many`)."""

    result: StoredResult
    model_id: str
    weight_hash: str
    prompt: str
    params: dict[str, Any]
    duration_s: float


@dataclass(frozen=True)
class QueryLimits:
    """Bounds on one console query: wall time, rows, characters per cell, bytes in all."""

    timeout_s: float = 10.0
    max_rows: int = 10_000
    max_cell_chars: int = 10_000
    max_response_bytes: int = 5 * 1024 * 1024


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class Store:
    """A DuckDB file holding runs. Use `Store.open(path)` for the process-wide instance."""

    def __init__(self, path: Path | str, *, lock_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_timeout_s = float(lock_timeout_s)
        self._guard = threading.Lock()  # protects _con and _users
        self._con: duckdb.DuckDBPyConnection | None = None
        self._users = 0
        self._write_lock = threading.Lock()
        with self.connect() as cur:
            cur.execute(_SCHEMA)

    @classmethod
    def open(cls, path: Path | str, *, lock_timeout_s: float | None = None) -> Store:
        """The process-wide Store for `path`."""
        key = Path(path).resolve()
        with _OPEN_LOCK:
            store = _OPEN.get(key)
            if store is None:
                store = cls(key, lock_timeout_s=30.0 if lock_timeout_s is None else lock_timeout_s)
                _OPEN[key] = store
            elif lock_timeout_s is not None:
                store.lock_timeout_s = float(lock_timeout_s)
            return store

    def close(self) -> None:
        """Forget this store (connections already close after each use)."""
        with _OPEN_LOCK:
            if _OPEN.get(self.path.resolve()) is self:
                _OPEN.pop(self.path.resolve(), None)

    # ---- connections ---------------------------------------------------------------------
    def _open_connection(self) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting with exponential backoff while another process holds it."""
        from explorer.errors import InputError

        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                # No file or network access from SQL: results arrive as registered Arrow tables,
                # and user queries (see `query`) can read only this database.
                con = duckdb.connect(str(self.path), config={"enable_external_access": False})
                break
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise InputError(f"cannot open the run store: {type(exc).__name__}") from exc
                if time.monotonic() + delay > deadline:
                    raise InputError(
                        f"the run store is busy (another process held it for {self.lock_timeout_s:g} s); "
                        "try again, or raise EXPLORER_STORE_LOCK_TIMEOUT_S"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            con.execute("SET lock_configuration = true")
        except duckdb.Error:
            pass  # already locked: another connection of this process opened the same instance
        return con

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor on the store for one request. Concurrent requests of this process share one
        connection; the file is released when the last of them finishes."""
        with self._guard:
            if self._con is None:
                self._con = self._open_connection()
            self._users += 1
            con = self._con
        try:
            cur = con.cursor()
            try:
                yield cur
            finally:
                cur.close()
        finally:
            with self._guard:
                self._users -= 1
                if self._users == 0 and self._con is not None:
                    self._con.close()
                    self._con = None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor that keeps the file open until it is garbage-collected; prefer `connect()`."""
        con = self._open_connection()
        return con

    # ---- writing -------------------------------------------------------------------------
    def save(
        self,
        result: StoredResult,
        *,
        model_id: str,
        weight_hash: str,
        prompt: str,
        params: dict[str, Any],
        duration_s: float,
    ) -> str:
        """Write `result` and its tables in one transaction; return the new run id."""
        pending = PendingRun(result, model_id, weight_hash, prompt, params, duration_s)
        return self.save_many([pending])[0]

    def save_many(self, runs: Sequence[PendingRun]) -> list[str]:
        """Write several runs in ONE transaction (all or none); return their new run ids."""
        prepared = []
        for run in runs:
            tables = run.result.to_tables()
            for name in tables:
                if not _TABLE_NAME.match(name):
                    raise ValueError(f"bad table name {name!r}")
            prepared.append((uuid.uuid4().hex[:12], run, tables))
        if not prepared:
            return []
        with self._write_lock, self.connect() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                for run_id, run, tables in prepared:
                    self._insert(cur, run_id, run, tables)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return [run_id for run_id, _, _ in prepared]

    @staticmethod
    def _insert(
        cur: duckdb.DuckDBPyConnection, run_id: str, run: PendingRun, tables: dict[str, pa.Table]
    ) -> None:
        kind = run.result.kind
        cur.execute(
            "INSERT INTO runs VALUES (?, now(), ?, ?, ?, ?, ?, ?, ?, 'complete', ?)",
            [
                run_id,
                kind,
                run.model_id,
                run.weight_hash,
                run.prompt,
                json.dumps(run.params, default=str),
                json.dumps(run.result.to_meta(), default=str),
                float(run.duration_s),
                cache_key(kind, run.model_id, run.weight_hash, run.prompt, run.params),
            ],
        )
        for name, table in tables.items():
            full = f"{kind}_{name}"
            cur.register("incoming", table)
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {full} AS SELECT ''::VARCHAR AS run_id, * FROM incoming LIMIT 0"
            )
            _add_new_columns(cur, full)
            cur.execute(f"INSERT INTO {full} BY NAME SELECT ? AS run_id, * FROM incoming", [run_id])
            cur.unregister("incoming")

    def delete(self, run_id: str) -> None:
        info = self.info(run_id)
        with self._write_lock, self.connect() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                for table in self._kind_tables(cur, info.kind):
                    cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
                cur.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    # ---- reading -------------------------------------------------------------------------
    def find(
        self, kind: str, model_id: str, weight_hash: str, prompt: str, params: dict[str, Any]
    ) -> str | None:
        """The newest complete run with the same cache key, if any."""
        key = cache_key(kind, model_id, weight_hash, prompt, params)
        with self.connect() as cur:
            row = cur.execute(
                "SELECT run_id FROM runs WHERE cache_key = ? AND status = 'complete' ORDER BY created DESC LIMIT 1",
                [key],
            ).fetchone()
        return None if row is None else str(row[0])

    def info(self, run_id: str) -> RunInfo:
        with self.connect() as cur:
            return self._info(cur, run_id)

    @staticmethod
    def _info(cur: duckdb.DuckDBPyConnection, run_id: str) -> RunInfo:
        row = cur.execute(
            "SELECT run_id, CAST(created AS VARCHAR), kind, model_id, weight_hash, prompt, params, "
            "duration_s, status FROM runs WHERE run_id = ?",
            [run_id],
        ).fetchone()
        if row is None:
            from explorer.errors import InputError

            raise InputError(f"no run with id {run_id!r} in the store")
        return RunInfo(
            run_id=row[0],
            created=row[1],
            kind=row[2],
            model_id=row[3],
            weight_hash=row[4],
            prompt=row[5],
            params=json.loads(row[6]),
            duration_s=row[7],
            status=row[8],
        )

    def list_runs(self, limit: int = 100, kind: str | None = None) -> list[RunInfo]:
        """Runs, newest first."""
        sql = (
            "SELECT run_id FROM runs "
            + ("WHERE kind = ? " if kind else "")
            + "ORDER BY created DESC, run_id LIMIT ?"
        )
        args: list[Any] = [kind, limit] if kind else [limit]
        with self.connect() as cur:
            ids = [r[0] for r in cur.execute(sql, args).fetchall()]
            return [self._info(cur, i) for i in ids]

    def load(self, run_id: str) -> StoredResult:
        """Rebuild a stored result from the database alone (no model needed)."""
        with self.connect() as cur:
            row = cur.execute("SELECT kind, meta FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                from explorer.errors import InputError

                raise InputError(f"no run with id {run_id!r} in the store")
            kind, meta_json = row
            cls = RESULT_KINDS.get(kind)
            tables: dict[str, pa.Table] = {}
            prefix = f"{kind}_"
            for table in self._kind_tables(cur, kind):
                tbl = cur.sql(
                    f"SELECT * EXCLUDE (run_id) FROM {table} WHERE run_id = $1", params=[run_id]
                ).to_arrow_table()
                tables[table[len(prefix) :]] = tbl
        meta = json.loads(meta_json)
        meta["run_id"] = run_id
        return cls.from_store(meta, tables)  # type: ignore[attr-defined,no-any-return]

    def query(
        self,
        sql: str,
        limit: int = 10_000,
        *,
        limits: QueryLimits | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> pa.Table:
        """Run one read-only SELECT (or PRAGMA/EXPLAIN) over the store, e.g. to compare runs.

        The connection has no file or network access, and the statement runs inside a
        transaction that is always rolled back, so nothing can be changed. The statement is
        interrupted after `limits.timeout_s` or as soon as `cancelled()` turns true (the client
        went away); string cells longer than `limits.max_cell_chars` are cut (marked with "…"),
        and a result over `limits.max_response_bytes` is refused. Paths of the server's files
        never appear in results or messages."""
        from explorer.errors import InputError
        from explorer.sql_guard import check_statement, scrub, scrub_table

        limits = limits or QueryLimits(max_rows=limit)
        statement = check_statement(sql)
        stop = threading.Event()
        why: list[str] = []
        with self.connect() as cur:

            def watchdog() -> None:
                deadline = time.monotonic() + limits.timeout_s
                while not stop.wait(0.05):
                    if time.monotonic() >= deadline:
                        why.append(
                            f"the query ran longer than {limits.timeout_s:g} s (EXPLORER_SQL_TIMEOUT_S)"
                        )
                    elif cancelled is not None and cancelled():
                        why.append("the query was cancelled")
                    else:
                        continue
                    cur.interrupt()
                    return

            guard = threading.Thread(target=watchdog, name="sql-watchdog", daemon=True)
            self._register_sweep_views(cur)
            cur.execute("BEGIN TRANSACTION")
            guard.start()
            try:
                table = cur.sql(statement).limit(min(limit, limits.max_rows)).to_arrow_table()
            except duckdb.InterruptException as exc:
                raise InputError(why[0] if why else "the query was interrupted") from exc
            except RuntimeError as exc:  # DuckDB's answer to Ctrl-C during a query
                if why:
                    raise InputError(why[0]) from exc
                if "interrupt" in str(exc).lower():
                    raise KeyboardInterrupt from exc
                raise
            except duckdb.Error as exc:
                raise InputError(f"query failed: {scrub(str(exc), self.path)}") from exc
            finally:
                stop.set()
                guard.join()
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass
        return scrub_table(table, self.path, limits)

    @staticmethod
    def _register_sweep_views(cur: duckdb.DuckDBPyConnection) -> None:
        """Each stored sweep's shard tables as views `sweep_<run_id>_<table>` on this cursor. The
        Parquet files are opened here, by pyarrow; SQL itself still has no file access, so a
        query reads the shards of stored sweeps and nothing else."""
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        from explorer.sweeps.result import view_name
        from explorer.sweeps.shards import table_files

        rows = cur.execute("SELECT run_id, meta FROM runs WHERE kind = 'sweep'").fetchall()
        for run_id, meta_json in rows:
            out = json.loads(meta_json).get("out_dir")
            if not out:
                continue
            for table, files in table_files(Path(out)).items():
                if not _TABLE_NAME.match(table):
                    continue
                try:
                    schema = pa.unify_schemas(
                        [pq.read_schema(f) for f in files], promote_options="permissive"
                    )
                    data = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
                except (OSError, pa.ArrowInvalid):
                    continue  # a shard deleted or damaged since: the view is left out
                cur.register(view_name(run_id, table), data)

    @staticmethod
    def _kind_tables(cur: duckdb.DuckDBPyConnection, kind: str) -> list[str]:
        rows = cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE ? ESCAPE '\\'",
            [kind.replace("_", "\\_") + "\\_%"],
        ).fetchall()
        known = set(RESULT_KINDS.kinds())
        out = []
        for (name,) in rows:
            # a table "lens_x" must not be claimed by kind "lens" if "lens_x" is itself a kind prefix
            rest = name[len(kind) + 1 :]
            if any(name.startswith(k + "_") and len(k) > len(kind) for k in known):
                continue
            if rest:
                out.append(name)
        return out
