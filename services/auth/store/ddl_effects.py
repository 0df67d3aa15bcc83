"""Whether a DDL statement's whole effect is already in the schema, read from
information_schema: what a migration run does with a statement the server refused because one
object it names already exists (or is already gone), as after a run killed once the statement
had committed but before the migration was recorded (migrate.py). Only the statement forms the
migrations use are understood; any other counts as not in place, and the run fails as before.
"""

from __future__ import annotations

import re

from services.auth.store.database import Statements

_IDENT = r"`?([A-Za-z0-9_$]+)`?"
_ALTER_TABLE = re.compile(rf"ALTER\s+TABLE\s+{_IDENT}\s+(.*)", re.S | re.I)
_CREATE_TABLE = re.compile(rf"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_IDENT}\s*\(", re.I)
_CREATE_INDEX = re.compile(rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+{_IDENT}\s+ON\s+{_IDENT}", re.I)
_DROP_INDEX = re.compile(rf"DROP\s+INDEX\s+{_IDENT}\s+ON\s+{_IDENT}\s*$", re.I)
# One clause of an ALTER TABLE, and what must then hold: (kind, must exist).
_CLAUSES = (
    (re.compile(r"(?:ALGORITHM|LOCK)\s*=?\s*\w+$", re.I), None, True),
    (re.compile(rf"ADD\s+(?:UNIQUE\s+)?(?:KEY|INDEX)\s+{_IDENT}", re.I), "index", True),
    (re.compile(rf"ADD\s+UNIQUE\s+{_IDENT}\s*\(", re.I), "index", True),
    (re.compile(rf"ADD\s+CONSTRAINT\s+{_IDENT}", re.I), "constraint", True),
    (re.compile(rf"ADD\s+(?:COLUMN\s+)?{_IDENT}\s", re.I), "column", True),
    (re.compile(rf"DROP\s+(?:KEY|INDEX)\s+{_IDENT}$", re.I), "index", False),
    (re.compile(rf"DROP\s+FOREIGN\s+KEY\s+{_IDENT}$", re.I), "constraint", False),
    (re.compile(rf"DROP\s+(?:COLUMN\s+)?{_IDENT}$", re.I), "column", False),
)
_PRESENT = {
    "table": "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
    " AND TABLE_NAME = %s",
    "column": "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
    " AND TABLE_NAME = %s AND COLUMN_NAME = %s",
    "index": "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()"
    " AND TABLE_NAME = %s AND INDEX_NAME = %s",
    "constraint": "SELECT 1 FROM information_schema.TABLE_CONSTRAINTS WHERE"
    " CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = %s AND CONSTRAINT_NAME = %s",
}


def _clauses(text: str) -> list[str]:
    """`text` split at its top-level commas (not inside parentheses or quotes)."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip().rstrip(";").strip())
    return [part for part in parts if part]


async def effect_in_place(statements: Statements, statement: str) -> bool:
    """Whether everything `statement` creates exists and everything it drops is gone: an
    error such as 'duplicate column' names one object, not the whole statement's effect (a
    two-clause ALTER, a CREATE TABLE naming a column twice, a DROP of a misspelt index)."""
    sql = " ".join(statement.split())
    checks: list[tuple[str, tuple[str, ...], bool]] = []
    if match := _CREATE_TABLE.match(sql):
        # Only 'table exists' (1050) can mean this one is in place; its definition is not
        # compared, as CREATE TABLE IF NOT EXISTS would not either.
        checks.append(("table", (match[1],), True))
    elif match := _CREATE_INDEX.match(sql):
        checks.append(("index", (match[2], match[1]), True))
    elif match := _DROP_INDEX.match(sql):
        checks.append(("index", (match[2], match[1]), False))
    elif match := _ALTER_TABLE.match(sql):
        table = match[1]
        for clause in _clauses(match[2]):
            for pattern, kind, must_exist in _CLAUSES:
                if found := pattern.match(clause):
                    if kind is not None:
                        checks.append((kind, (table, found[1]), must_exist))
                    break
            else:
                return False  # a clause whose effect cannot be checked
    else:
        return False
    for kind, args, must_exist in checks:
        present = await statements.fetch_one(_PRESENT[kind], args) is not None
        if present != must_exist:
            return False
    return bool(checks)
