"""A resumable run's folder: a settings record and an append-only JSON-lines file of results.

Each finished unit (a sweep cell, an axis in one direction) is one line, flushed and synced, so
a run stopped at any point resumes where it stopped with the same settings; a folder holding
another run's settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from unlock_lens.artifacts import atomic_write_bytes
from unlock_lens.errors import UnlockLensError


def settings_record(**parts: Any) -> dict[str, Any]:
    """``parts`` (JSON-able) with a short ``hash`` of them: what a resume must match."""
    record = dict(parts)
    record["hash"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return record


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a results file (a line cut by an interruption is dropped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one result line, flushed and synced to disk."""
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def open_run(out: Path, record: dict[str, Any], *, meta: str, rows: str, what: str) -> list[dict[str, Any]]:
    """The folder's finished rows, after checking it holds this run (or nothing). ``meta`` /
    ``rows``: the file names of the settings record and the results; ``what``: the run's name
    in errors ("a sweep"). A line cut by an interruption is removed from the file, so the next
    row starts on a line of its own."""
    if out.exists() and not out.is_dir():
        raise UnlockLensError(f"--out {out} is a file: {what} writes a folder; give a folder path")
    meta_path, rows_path = out / meta, out / rows
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("hash") != record["hash"]:
            raise UnlockLensError(f"--out {out} holds {what} with other settings; "
                                  "give another --out folder or delete that one")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(meta_path, json.dumps(record, indent=1).encode())
    done = read_rows(rows_path)
    if rows_path.exists() and rows_path.read_text() != "".join(json.dumps(r) + "\n" for r in done):
        atomic_write_bytes(rows_path, "".join(json.dumps(r) + "\n" for r in done).encode())
    return done
