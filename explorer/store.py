"""DuckDB run store: one file, one connection per process, a cursor per request.

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
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from explorer.results import RESULT_KINDS, StoredResult

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_OPEN: dict[Path, Store] = {}
_OPEN_LOCK = threading.Lock()


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


class Store:
    """A DuckDB file holding runs. Use `Store.open(path)` to share one connection per process."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # No file or network access from SQL: results arrive as registered Arrow tables,
            # and user queries (see `query`) can read only this database.
            self._con = duckdb.connect(str(self.path), config={"enable_external_access": False})
            self._con.execute("SET lock_configuration = true")
        except duckdb.IOException as exc:
            from explorer.errors import InputError

            raise InputError(f"cannot open the run store {self.path}: {exc}") from exc
        self._write_lock = threading.Lock()
        self._con.execute(
            """
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
        )

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """The process-wide Store for `path` (DuckDB allows one read-write connection per file)."""
        key = Path(path).resolve()
        with _OPEN_LOCK:
            store = _OPEN.get(key)
            if store is None:
                store = cls(key)
                _OPEN[key] = store
            return store

    def close(self) -> None:
        with _OPEN_LOCK:
            _OPEN.pop(self.path.resolve(), None)
        self._con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self._con.cursor()

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
        run_id = uuid.uuid4().hex[:12]
        kind = result.kind
        tables = result.to_tables()
        for name in tables:
            if not _TABLE_NAME.match(name):
                raise ValueError(f"bad table name {name!r}")
        key = cache_key(kind, model_id, weight_hash, prompt, params)
        cur = self.cursor()
        with self._write_lock:
            cur.execute("BEGIN TRANSACTION")
            try:
                cur.execute(
                    "INSERT INTO runs VALUES (?, now(), ?, ?, ?, ?, ?, ?, ?, 'complete', ?)",
                    [
                        run_id,
                        kind,
                        model_id,
                        weight_hash,
                        prompt,
                        json.dumps(params, default=str),
                        json.dumps(result.to_meta(), default=str),
                        float(duration_s),
                        key,
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
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return run_id

    def delete(self, run_id: str) -> None:
        info = self.info(run_id)
        cur = self.cursor()
        with self._write_lock:
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
        row = (
            self.cursor()
            .execute(
                "SELECT run_id FROM runs WHERE cache_key = ? AND status = 'complete' ORDER BY created DESC LIMIT 1",
                [key],
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def info(self, run_id: str) -> RunInfo:
        row = (
            self.cursor()
            .execute(
                "SELECT run_id, CAST(created AS VARCHAR), kind, model_id, weight_hash, prompt, params, "
                "duration_s, status FROM runs WHERE run_id = ?",
                [run_id],
            )
            .fetchone()
        )
        if row is None:
            from explorer.errors import InputError

            raise InputError(f"no run with id {run_id!r} in {self.path}")
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
        ids = [r[0] for r in self.cursor().execute(sql, args).fetchall()]
        return [self.info(i) for i in ids]

    def load(self, run_id: str) -> StoredResult:
        """Rebuild a stored result from the database alone (no model needed)."""
        cur = self.cursor()
        row = cur.execute("SELECT kind, meta FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            from explorer.errors import InputError

            raise InputError(f"no run with id {run_id!r} in {self.path}")
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

    def query(self, sql: str, limit: int = 10_000) -> pa.Table:
        """Run one read-only SELECT (or PRAGMA/EXPLAIN) over the store, e.g. to compare runs.

        The connection has no file or network access, and the statement runs inside a
        transaction that is always rolled back, so nothing can be changed."""
        from explorer.errors import InputError

        sql = (sql or "").strip()
        if not sql:
            raise InputError("the query is empty")
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise InputError(f"cannot parse the query: {exc}") from exc
        allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.PRAGMA, duckdb.StatementType.EXPLAIN}
        if len(statements) != 1 or statements[0].type not in allowed:
            raise InputError("only one read-only statement (SELECT, PRAGMA, EXPLAIN) can be run")
        cur = self.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            table = cur.sql(statements[0].query.rstrip().rstrip(";")).limit(limit).to_arrow_table()
        except duckdb.Error as exc:
            raise InputError(f"query failed: {exc}") from exc
        finally:
            cur.execute("ROLLBACK")
        return table

    def _kind_tables(self, cur: duckdb.DuckDBPyConnection, kind: str) -> list[str]:
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
