"""A Parquet table kept as one compacted file plus append-only part files, upserted by key.

The Parquet sink writes a few rows at a time (one trial's row, one trial's epochs) into tables
that grow to millions of rows. Rewriting the whole file at every write makes each write cost
what the table holds; here a write costs what it adds:

- `append(rows)` writes the new rows as a level-0 part file, `_parts/<table>/L0-<first>-<last>`,
  `first`/`last` being the write's sequence numbers (a level-0 part has first == last). When
  `FAN_IN` parts of one level exist, they are merged into one part of the next level, so the
  number of part files stays logarithmic in the number of writes, and each row is rewritten
  about log_FAN_IN(writes) times in all.
- `compact()` merges the compacted file and every part into the compacted file (the path the
  docs name, `trials.parquet` / `epochs.parquet`), records in its metadata the last sequence
  number it holds, then deletes the parts. The sink compacts when a sweep starts and ends and
  every few minutes, so `pd.read_parquet` on the documented path is never far behind.
- `read()` gives the current table: the compacted file plus the parts it does not hold yet,
  the last write of each key winning (an upsert), sorted by key.

Every file is written to a temporary name and renamed, and a crash between two steps leaves
nothing that `read()` misreads: parts the compacted file already holds are skipped by sequence
number, and parts left over from an interrupted merge are skipped because the merged part's
range covers theirs. Folders whose names start with `_` are ignored by pyarrow's dataset
discovery, so reading the sweep folder as a dataset does not see the parts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["FAN_IN", "PARTS_DIR", "PartedTable"]

PARTS_DIR = "_parts"
FAN_IN = 16
_THROUGH_KEY = b"orchestrator.parts_through"
_PART = re.compile(r"^L(\d+)-(\d{9})-(\d{9})\.parquet$")
_ROW = "__row"


def _part_name(level: int, first: int, last: int) -> str:
    return f"L{level}-{first:09d}-{last:09d}.parquet"


def _write(path: Path, table: pa.Table, write_bytes: Callable[[Path, bytes], None]) -> None:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_bytes(path, buf.getvalue().to_pybytes())


class PartedTable:
    """One upserted Parquet table at `path`, its unmerged writes in `<dir>/_parts/<stem>/`.

    `keys`: the columns that identify a row. `schema(table)`: the table's canonical schema
    (column order and types) given the union of the columns written so far. `write_bytes`:
    the atomic writer (temporary file, fsync, rename) the rest of the sink uses.
    """

    def __init__(self, path: Path, keys: Sequence[str], schema: Callable[[pa.Schema], pa.Schema],
                 write_bytes: Callable[[Path, bytes], None], fan_in: int = FAN_IN) -> None:
        self.path = Path(path)
        self.keys = tuple(keys)
        self._schema = schema
        self._write_bytes = write_bytes
        self.fan_in = fan_in
        self.parts_dir = self.path.parent / PARTS_DIR / self.path.stem
        self._next_seq = 0                    # read from disk at the first append

    # -- state on disk ---------------------------------------------------------------------------
    def _through(self) -> int:
        """The last sequence number the compacted file holds (0: none, or an older layout)."""
        if not self.path.is_file():
            return 0
        meta = pq.read_schema(self.path).metadata or {}
        return int(meta.get(_THROUGH_KEY, b"0"))

    def _parts(self) -> list[tuple[int, int, int]]:
        """(level, first, last) of every part file, oldest first."""
        if not self.parts_dir.is_dir():
            return []
        found: list[tuple[int, int, int]] = []
        for name in os.listdir(self.parts_dir):
            match = _PART.match(name)
            if match:
                level, first, last = (int(g) for g in match.groups())
                found.append((level, first, last))
        return sorted(found, key=lambda p: (p[1], -p[2]))

    def _live_parts(self, through: int) -> list[tuple[int, int, int]]:
        """The parts `read()` uses: newer than the compacted file, none inside another's range
        (the inputs of a merge that was cut short before it deleted them)."""
        live: list[tuple[int, int, int]] = []
        for part in self._parts():
            if part[2] <= through or (live and part[2] <= live[-1][2]):
                continue
            live.append(part)
        return live

    def exists(self) -> bool:
        """Whether anything was written: the compacted file or a part."""
        return self.path.is_file() or bool(self._parts())

    # -- writes ----------------------------------------------------------------------------------
    def append(self, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> None:
        """Write `rows` (typed by `schema`) as a new part; merge a level when it is full."""
        if not rows:
            return
        if not self._next_seq:
            self._next_seq = max([self._through(), *(p[2] for p in self._parts())]) + 1
        seq = self._next_seq
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(list(rows), schema=schema)
        _write(self.parts_dir / _part_name(0, seq, seq), table, self._write_bytes)
        self._next_seq = seq + 1
        self._merge_full_levels()

    def _merge_full_levels(self) -> None:
        level = 0
        while True:
            group = [p for p in self._live_parts(self._through()) if p[0] == level]
            if len(group) < self.fan_in:
                return
            merged = self._keep_last([self._read_part(p) for p in group])
            first, last = group[0][1], group[-1][2]
            _write(self.parts_dir / _part_name(level + 1, first, last), merged, self._write_bytes)
            for part in group:
                (self.parts_dir / _part_name(*part)).unlink()
            level += 1

    def compact(self, drop: Callable[[pa.Table], Any] | None = None) -> None:
        """Merge everything into the compacted file; `drop(table)` -> boolean mask of rows to
        leave out (a restarted trial's epochs beyond where it ended)."""
        through = self._through()
        parts = self._live_parts(through)
        if not parts and drop is None:
            return
        table = self.read()
        if table is None:
            return
        if drop is not None:
            table = table.filter(pc.invert(drop(table)))
        last = max([through, *(p[2] for p in parts)])
        meta = dict(table.schema.metadata or {})
        meta[_THROUGH_KEY] = str(last).encode()
        _write(self.path, table.replace_schema_metadata(meta), self._write_bytes)
        for part in self._parts():
            if part[2] <= last:
                (self.parts_dir / _part_name(*part)).unlink()
        for folder in (self.parts_dir, self.parts_dir.parent):     # once empty, leave no trace
            try:
                folder.rmdir()
            except OSError:
                break

    # -- reads -----------------------------------------------------------------------------------
    def _read_part(self, part: tuple[int, int, int]) -> pa.Table:
        return pq.read_table(self.parts_dir / _part_name(*part))

    def read(self, columns: Sequence[str] | None = None) -> pa.Table | None:
        """The current table (None if nothing was written), one row per key, sorted by key."""
        through = self._through()
        tables = [pq.read_table(self.path)] if self.path.is_file() else []
        tables += [self._read_part(p) for p in self._live_parts(through)]
        if not tables:
            return None
        table = self._keep_last(tables)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        return table

    def _keep_last(self, tables: list[pa.Table]) -> pa.Table:
        """Concatenate oldest first, keep each key's last row, canonical schema, sorted by key."""
        tables = [t.replace_schema_metadata(None) for t in tables]
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 \
            else tables[0]
        if len(tables) > 1:
            numbered = table.append_column(_ROW, pa.array(np.arange(len(table), dtype=np.int64)))
            last = numbered.group_by(list(self.keys), use_threads=False).aggregate(
                [(_ROW, "max")])[f"{_ROW}_max"]
            table = table.take(last)
        schema = self._schema(table.schema)
        table = table.select(schema.names).cast(schema)
        return table.sort_by([(k, "ascending") for k in self.keys])
