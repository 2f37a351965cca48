"""What the read-only SQL console may run, and what it may show.

`check_statement` admits exactly one SELECT / PRAGMA / EXPLAIN, refuses invalid text (lone
surrogates) and the catalog functions that reveal server facts (file paths, settings,
extensions); `scrub` and `scrub_table` hide the server's paths in messages and results, cut
over-long cells and refuse over-large responses. The store runs the statement (see
`Store.query`); this module only decides.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from explorer.errors import InputError
from explorer.text_input import check_text

if TYPE_CHECKING:
    from explorer.store import QueryLimits

HIDDEN = "<hidden>"
CUT_MARK = "…"
# catalog functions whose output names server paths, settings or installed software
_REVEALING = re.compile(
    r"duckdb_databases|duckdb_settings|current_setting|duckdb_extensions|duckdb_temporary_files|"
    r"database_list|duckdb_secrets|duckdb_external_file_cache|getenv|duckdb_memory|"
    r"duckdb_log|pragma_version|pragma_platform|pragma_user_agent|user_agent"
)
_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.PRAGMA, duckdb.StatementType.EXPLAIN}


def check_statement(sql: str | None) -> str:
    """The one read-only statement in `sql`, without its trailing semicolon; InputError otherwise."""
    sql = check_text(sql or "", "the query").strip()
    if not sql:
        raise InputError("the query is empty")
    match = _REVEALING.search(sql.lower())
    if match:
        raise InputError(f"{match.group(0)} is not available in this console (it describes the server)")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InputError(f"cannot parse the query: {exc}") from exc
    if len(statements) != 1 or statements[0].type not in _ALLOWED:
        raise InputError("only one read-only statement (SELECT, PRAGMA, EXPLAIN) can be run")
    return str(statements[0].query).rstrip().rstrip(";")


def _secrets(db_path: Path) -> list[str]:
    """Server paths that must not be shown, longest first (so a parent never half-replaces a child)."""
    found = {str(db_path), str(db_path.resolve()), str(Path.home()), tempfile.gettempdir(), os.getcwd()}
    for parent in list(db_path.resolve().parents)[:-1]:
        found.add(str(parent))  # every folder above the store, but not the root "/"
    return sorted((s for s in found if len(s) > 1), key=len, reverse=True)


def scrub(text: str, db_path: Path) -> str:
    """`text` with the server's paths replaced by <hidden>."""
    for secret in _secrets(db_path):
        text = text.replace(secret, HIDDEN)
    return text


def scrub_table(table: pa.Table, db_path: Path, limits: QueryLimits) -> pa.Table:
    """Hide server paths in string columns, cut long cells, refuse an over-large result."""
    secrets = _secrets(db_path)
    columns = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for secret in secrets:
                column = pc.replace_substring(column, pattern=secret, replacement=HIDDEN)
            too_long = pc.greater(pc.utf8_length(column), limits.max_cell_chars)
            cut = pc.binary_join_element_wise(
                pc.utf8_slice_codeunits(column, 0, limits.max_cell_chars), CUT_MARK, ""
            )
            column = pc.if_else(too_long, cut, column)
        columns.append(column)
    out = pa.table(columns, names=table.column_names)
    if out.nbytes > limits.max_response_bytes:
        raise InputError(
            f"the result is {out.nbytes / 1e6:.1f} MB; the limit is {limits.max_response_bytes / 1e6:.1f} MB "
            "(EXPLORER_SQL_MAX_RESPONSE_BYTES): select fewer rows or columns"
        )
    return out
