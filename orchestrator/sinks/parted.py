"""A Parquet table kept as one compacted file plus append-only part files, upserted by key.

The Parquet sink writes a few rows at a time (one trial's row, one trial's epochs) into tables
that grow to millions of rows. Rewriting the whole file at every write makes each write cost
what the table holds; here a write costs what it adds:

- `append(rows)` writes the new rows as a level-0 part file,
  `_parts/<table>/L0-<first>-<last>.arrow` (Arrow IPC), `first`/`last` being the write's sequence
  numbers (a level-0 part has first == last). When
  `FAN_IN` parts of one level exist, they are merged (concatenated in write order, a key
  written twice kept twice) into one part of the next level, so the number of part files stays
  logarithmic in the number of writes, and each row is rewritten about log_FAN_IN(writes)
  times in all.
- `compact()` merges the compacted file and every part into the compacted file (the path the
  docs name, `trials.parquet` / `epochs.parquet`), records in its metadata the last sequence
  number it holds, then deletes the parts. The sink compacts when a sweep starts and ends and
  every few minutes, so `pd.read_parquet` on the documented path is never far behind.
- `read()` gives the current table: the compacted file plus the parts it does not hold yet,
  the last write of each key winning (an upsert), sorted by key.

With `log_rows` > 0 (the sink's tables) a write does not make a part of its own: it is appended
to the writer's log, `_parts/<table>/log-<seq>.arrows`, one length-prefixed Arrow IPC stream per
write, flushed and fsync'd before `append` returns (as durable as a part, at a third of the
cost: no new file, no rename, no merge). The log holds one sequence number; once it has
`log_rows` rows or `LOG_WRITES` writes it is sealed: written as the level-0 part of its number,
then deleted. A write cut short (a killed driver, a full disk) leaves a torn last record, which
readers skip: it is the write whose `append` never returned. At most one log exists, with the
highest sequence number: a writer seals a log left by a killed driver before its first write,
and a log that failed a write before it writes again.

Every file is written to a temporary name and renamed, and a crash between two steps leaves
nothing that `read()` misreads: parts the compacted file already holds are skipped by sequence
number, and parts (and a log) left over from an interrupted merge (or seal) are skipped because
the merged part's range covers theirs. Folders whose names start with `_` are ignored by
pyarrow's dataset discovery, so reading the sweep folder as a dataset does not see the parts.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.layout import PARTS_DIR

__all__ = ["FAN_IN", "LOG_ROWS", "LOG_WRITES", "PARTS_DIR", "PartedTable"]

FAN_IN = 16
LOG_ROWS = 50_000
LOG_WRITES = 1_000
_THROUGH_KEY = b"orchestrator.parts_through"
_PART = re.compile(r"^L(\d+)-(\d{9})-(\d{9})\.arrow$")
_LOG = re.compile(r"^log-(\d{9})\.arrows$")
_LOG_LEVEL = -1                     # a log, in the (level, first, last) tuples of the listing
_SIZE = 8                           # bytes of a log record's length prefix (little-endian)
_ROW = "__row"


def _part_name(level: int, first: int, last: int) -> str:
    if level == _LOG_LEVEL:
        return f"log-{first:09d}.arrows"
    return f"L{level}-{first:09d}-{last:09d}.arrow"


def _log_record(table: pa.Table) -> bytes:
    """One write in a log: its length, then the rows as a whole Arrow IPC stream (schema
    included, so that writes with different columns can follow each other)."""
    buf = pa.BufferOutputStream()
    with pa.ipc.new_stream(buf, table.schema) as writer:
        writer.write_table(table)
    payload = buf.getvalue().to_pybytes()
    return len(payload).to_bytes(_SIZE, "little") + payload


def _log_tables(data: bytes) -> list[pa.Table]:
    """The writes in a log's bytes, up to the first one cut short (a write that never returned)."""
    tables: list[pa.Table] = []
    view = memoryview(data)
    pos = 0
    while pos + _SIZE <= len(data):
        size = int.from_bytes(view[pos:pos + _SIZE], "little")
        end = pos + _SIZE + size
        if size == 0 or end > len(data):
            break
        try:
            tables.append(pa.ipc.open_stream(pa.py_buffer(view[pos + _SIZE:end])).read_all())
        except (pa.ArrowInvalid, OSError):
            break
        pos = end
    return tables


def _write(path: Path, table: pa.Table, write_bytes: Callable[[Path, bytes], None]) -> None:
    """The compacted file as Parquet; a part (`.arrow`) in Arrow's IPC file format, which writes
    about ten times faster than Parquet for a few rows and is read back without decoding."""
    buf = pa.BufferOutputStream()
    if path.suffix == ".arrow":
        with pa.ipc.new_file(buf, table.schema) as writer:
            writer.write_table(table)
    else:
        pq.write_table(table, buf)
    write_bytes(path, buf.getvalue().to_pybytes())


class PartedTable:
    """One upserted Parquet table at `path`, its unmerged writes in `<dir>/_parts/<stem>/`.

    `keys`: the columns that identify a row. `schema(table)`: the table's canonical schema
    (column order and types) given the union of the columns written so far. `write_bytes`:
    the atomic writer (temporary file, fsync, rename) the rest of the sink uses. `log_rows`:
    0, every write a part; else writes go to a log sealed into a part at this many rows.
    """

    def __init__(self, path: Path, keys: Sequence[str], schema: Callable[[pa.Schema], pa.Schema],
                 write_bytes: Callable[[Path, bytes], None], fan_in: int = FAN_IN,
                 log_rows: int = 0, log_writes: int = LOG_WRITES) -> None:
        self.path = Path(path)
        self.keys = tuple(keys)
        self._schema = schema
        self._write_bytes = write_bytes
        self.fan_in = fan_in
        self.log_rows = log_rows
        self.log_writes = log_writes
        # This instance's log: its sequence number, open file, writes (kept for reads and the
        # seal), rows; `_log_broken`: a write failed, seal before writing again.
        self._log_seq: int | None = None
        self._log_fd: int | None = None         # unbuffered: nothing left to flush after a fault
        self._log_size = 0
        self._log_writes: list[pa.Table] = []
        self._log_count = 0
        self._log_broken = False
        self.parts_dir = self.path.parent / PARTS_DIR / self.path.stem
        self._next_seq = 0                    # read from disk at the first append
        # What this instance knows of the folder, read once: it is the only writer (the driver's
        # lock), so its own writes keep these current, and the parts it wrote stay in memory
        # for the merges instead of being read back.
        self._through_seq: int | None = None
        self._listing: list[tuple[int, int, int]] | None = None
        self._cache: dict[tuple[int, int, int], pa.Table] = {}

    # -- state on disk ---------------------------------------------------------------------------
    def _through(self) -> int:
        """The last sequence number the compacted file holds (0: none)."""
        if self._through_seq is None:
            meta = pq.read_schema(self.path).metadata if self.path.is_file() else None
            self._through_seq = int((meta or {}).get(_THROUGH_KEY, b"0"))
        return self._through_seq

    def _parts(self) -> list[tuple[int, int, int]]:
        """(level, first, last) of every part file and log (level -1), oldest first; a log
        after the part of the same number (its seal)."""
        if self._listing is None:
            found: list[tuple[int, int, int]] = []
            for name in os.listdir(self.parts_dir) if self.parts_dir.is_dir() else ():
                match = _PART.match(name)
                if match:
                    level, first, last = (int(g) for g in match.groups())
                    found.append((level, first, last))
                elif match := _LOG.match(name):
                    seq = int(match.group(1))
                    found.append((_LOG_LEVEL, seq, seq))
            self._listing = found
        return sorted(self._listing, key=lambda p: (p[1], -p[2], p[0] == _LOG_LEVEL))

    def _add_part(self, part: tuple[int, int, int], table: pa.Table) -> None:
        _write(self.parts_dir / _part_name(*part), table, self._write_bytes)
        self._parts()
        assert self._listing is not None
        self._listing.append(part)
        self._cache[part] = table

    def _remove_part(self, part: tuple[int, int, int]) -> None:
        if part[0] == _LOG_LEVEL and part[1] == self._log_seq:
            self._close_log()
        (self.parts_dir / _part_name(*part)).unlink()
        assert self._listing is not None
        self._listing.remove(part)
        self._cache.pop(part, None)

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
        """Whether anything was written: the compacted file, a part, or a log with a whole write
        (a log cut short before its first write holds nothing)."""
        return self.path.is_file() or any(
            part[0] != _LOG_LEVEL or self._read_part(part) is not None for part in self._parts())

    # -- writes ----------------------------------------------------------------------------------
    def append(self, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> None:
        """Write `rows` (typed by `schema`): to the log, sealed when full, or (`log_rows` 0) as
        a new part; merge a level when it is full. Durable on disk when it returns."""
        if not rows:
            return
        table = pa.Table.from_pylist(list(rows), schema=schema)
        if self.log_rows:
            self._log_append(table)
            if self._log_count >= self.log_rows or len(self._log_writes) >= self.log_writes:
                self.seal()
            return
        seq = self._take_seq()
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._add_part((0, seq, seq), table)
        self._merge_full_levels()

    def _take_seq(self) -> int:
        """The next sequence number; at this instance's first write, logs a killed writer left
        are sealed first (so that the only log is the newest)."""
        if not self._next_seq:
            for part in self._parts():
                if part[0] == _LOG_LEVEL:
                    self._seal_leftover(part)
            self._next_seq = max([self._through(), *(p[2] for p in self._parts())]) + 1
        seq = self._next_seq
        self._next_seq = seq + 1
        return seq

    def _seal_leftover(self, log: tuple[int, int, int]) -> None:
        """A log of an earlier writer: as a part of its number if anything still needs it."""
        if log in self._live_parts(self._through()):
            tables = _log_tables((self.parts_dir / _part_name(*log)).read_bytes())
            if tables:
                self._add_part((0, log[1], log[2]), self._keep_last(tables))
        self._remove_part(log)

    def _log_append(self, table: pa.Table) -> None:
        if self._log_broken:
            self.seal()
        if self._log_seq is None:
            seq = self._take_seq()
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            part = (_LOG_LEVEL, seq, seq)
            self._log_fd = os.open(self.parts_dir / _part_name(*part),
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._log_seq, self._log_size = seq, 0
            self._parts()
            assert self._listing is not None
            self._listing.append(part)
        record = memoryview(_log_record(table))
        fd = self._log_fd
        assert fd is not None
        try:
            done = 0
            while done < len(record):
                done += os.write(fd, record[done:])
            os.fsync(fd)
        except BaseException:
            # Cut the torn record off if the system lets us; either way the log takes no more
            # writes (a reader stops at a torn record): the next write seals it first.
            self._log_broken = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._log_size)
            raise
        self._log_size += len(record)
        self._log_writes.append(table)
        self._log_count += table.num_rows

    def seal(self) -> None:
        """Write this instance's log as the level-0 part of its number and delete it."""
        if self._log_seq is None:
            return
        seq = self._log_seq
        if self._log_writes:
            # One row per key, as every level-0 part has (a lone one is read without grouping).
            self._add_part((0, seq, seq), self._keep_last(self._log_writes))
        self._remove_part((_LOG_LEVEL, seq, seq))
        self._merge_full_levels()

    def _close_log(self) -> None:
        if self._log_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._log_fd)
        self._log_seq, self._log_fd, self._log_size = None, None, 0
        self._log_writes, self._log_count, self._log_broken = [], 0, False

    def _merge_full_levels(self) -> None:
        # (Never a log: it is the newest write, and no merged range may cover its number.)
        level = 0
        while True:
            group = [p for p in self._live_parts(self._through()) if p[0] == level]
            if len(group) < self.fan_in:
                return
            # Kept whole, in write order: a key written twice is resolved when it is read or
            # compacted (the last write wins there), so a merge does no grouping.
            merged = self._concat([t for t in map(self._read_part, group) if t is not None])
            self._add_part((level + 1, group[0][1], group[-1][2]), merged)
            for part in group:
                self._remove_part(part)
            level += 1

    def compact(self, drop: Callable[[pa.Table], Any] | None = None) -> None:
        """Merge everything into the compacted file; `drop(table)` -> boolean mask of rows to
        leave out (a restarted trial's epochs beyond where it ended)."""
        through = self._through()
        parts = self._live_parts(through)
        if not parts and drop is None:
            for part in set(self._parts()) - set(parts):   # left by a cut-short merge/compaction
                self._remove_part(part)
            self._remove_empty_folders()
            return
        table = self.read()
        if table is None:                   # logs without a whole write: nothing to keep
            for part in parts:
                self._remove_part(part)
            self._remove_empty_folders()
            return
        if drop is not None:
            table = table.filter(pc.invert(drop(table)))
        last = max([through, *(p[2] for p in parts)])
        meta = dict(table.schema.metadata or {})
        meta[_THROUGH_KEY] = str(last).encode()
        _write(self.path, table.replace_schema_metadata(meta), self._write_bytes)
        self._through_seq = last
        for part in self._parts():
            if part[2] <= last:
                self._remove_part(part)
        self._remove_empty_folders()

    def _remove_empty_folders(self) -> None:
        for folder in (self.parts_dir, self.parts_dir.parent):     # once empty, leave no trace
            try:
                folder.rmdir()
            except OSError:
                break

    # -- reads -----------------------------------------------------------------------------------
    def _read_part(self, part: tuple[int, int, int]) -> pa.Table | None:
        """A part's rows; a log's writes one after the other (None: no whole write yet)."""
        if part[0] == _LOG_LEVEL:
            if part[1] == self._log_seq:
                tables = list(self._log_writes)
            else:
                tables = _log_tables((self.parts_dir / _part_name(*part)).read_bytes())
            return self._concat(tables) if tables else None
        cached = self._cache.get(part)
        if cached is not None:
            return cached
        data = (self.parts_dir / _part_name(*part)).read_bytes()
        return pa.ipc.open_file(pa.BufferReader(data)).read_all()

    def read(self, columns: Sequence[str] | None = None) -> pa.Table | None:
        """The current table (None if nothing was written), one row per key, sorted by key."""
        through = self._through()
        tables = [pq.read_table(self.path)] if self.path.is_file() else []
        live = self._live_parts(through)
        tables += [t for t in (self._read_part(p) for p in live) if t is not None]
        if not tables:
            return None
        # One key, one row already: the compacted file alone, or one write (a level-0 part).
        unique = len(tables) == 1 and all(p[0] == 0 for p in live)
        table = self._keep_last(tables, unique=unique)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        return table

    def _concat(self, tables: list[pa.Table]) -> pa.Table:
        """The tables one after the other (oldest first) in the canonical schema."""
        tables = [t.replace_schema_metadata(None) for t in tables]
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 \
            else tables[0]
        schema = self._schema(table.schema)
        return table.select(schema.names).cast(schema)

    def _keep_last(self, tables: list[pa.Table], unique: bool = False) -> pa.Table:
        """Concatenated oldest first, each key's last row (`unique`: there is one), sorted."""
        table = self._concat(tables)
        if not unique:
            numbered = table.append_column(_ROW, pa.array(np.arange(len(table), dtype=np.int64)))
            last = numbered.group_by(list(self.keys), use_threads=False).aggregate(
                [(_ROW, "max")])[f"{_ROW}_max"]
            table = table.take(last)
        return table.sort_by([(k, "ascending") for k in self.keys])
