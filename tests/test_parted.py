"""The append-only Parquet layout: upserts across part files, bounded file count, a write cost
that does not grow with the table, and no misread after a crash between two steps."""

from __future__ import annotations

import random
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import orchestrator.sinks.parquet as tables
from orchestrator.sinks.base import TrialInfo, TrialOutcome
from orchestrator.sinks.parquet import (
    EPOCHS_FILE,
    TRIALS_FILE,
    ParquetSink,
    atomic_write_bytes,
    read_epochs,
    read_trials,
    table_exists,
)
from orchestrator.sinks.parted import PARTS_DIR, PartedTable

SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("step", pa.int64()),
                    pa.field("value", pa.float64())])


def _table(path, fan_in=4) -> PartedTable:
    return PartedTable(path, ("key", "step"), lambda _: SCHEMA, atomic_write_bytes, fan_in=fan_in)


def _random_writes(table: PartedTable, count: int, seed: int = 0) -> dict:
    """`count` appends of 1-5 rows over a small key space (so most rows replace earlier ones);
    the expected table: the last value written per key."""
    rng = random.Random(seed)
    expected = {}
    for i in range(count):
        rows = [{"key": f"t{rng.randrange(6)}", "step": rng.randrange(4), "value": float(i)}
                for _ in range(rng.randrange(1, 6))]
        latest = {(r["key"], r["step"]): r for r in rows}    # one write, one row per key
        table.append(list(latest.values()), SCHEMA)
        expected.update(latest)
    return expected


def _as_dict(table: pa.Table) -> dict:
    return {(r["key"], r["step"]): r for r in table.to_pylist()}


def _files(path):
    folder = path.parent / PARTS_DIR / path.stem
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_the_last_write_of_each_key_wins_across_parts_merges_and_compaction(tmp_path):
    path = tmp_path / "t.parquet"
    table = _table(path)
    expected = _random_writes(table, 150)
    got = table.read()
    assert _as_dict(got) == expected and got.num_rows == len(expected)   # one row per key
    assert got.column_names == SCHEMA.names
    assert got.to_pandas().equals(got.to_pandas().sort_values(["key", "step"])
                                  .reset_index(drop=True))
    # Merged levels keep the number of files logarithmic: at most fan_in - 1 per level.
    assert not path.exists() and 0 < len(_files(path)) <= 3 * 4
    table.compact()
    assert _files(path) == [] and not (tmp_path / PARTS_DIR).exists()
    compacted = pq.read_table(path)
    assert _as_dict(compacted) == expected and compacted.num_rows == len(expected)
    # A fresh instance (a new driver) continues the sequence after the compacted file's.
    again = _table(path)
    more = _random_writes(again, 40, seed=1)
    assert _as_dict(again.read()) == {**expected, **more}


def test_a_merged_part_alone_is_read_one_row_per_key(tmp_path):
    # Merges concatenate (a key written twice is kept twice): reading must still pick the last.
    path = tmp_path / "t.parquet"
    table = _table(path)
    for i in range(table.fan_in):
        table.append([{"key": "t0", "step": 0, "value": float(i)}], SCHEMA)
    assert [name[:2] for name in _files(path)] == ["L1"]
    assert table.read().to_pylist() == [{"key": "t0", "step": 0, "value": table.fan_in - 1.0}]


def test_a_crash_between_two_steps_is_never_misread(tmp_path):
    path = tmp_path / "t.parquet"
    table = _table(path, fan_in=1000)           # no merge on its own
    expected = _random_writes(table, 12)
    parts = tmp_path / PARTS_DIR / "t"
    saved = tmp_path / "saved"
    shutil.copytree(parts, saved)

    # A merge cut short: the merged part is written, its inputs not yet deleted.
    table.fan_in = 12
    _random_writes(table, 0)
    table._merge_full_levels()
    assert [n[:2] for n in _files(path)] == ["L1"]
    for name in saved.iterdir():
        shutil.copy(name, parts / name.name)
    # (What the next driver or a reader sees: a new instance, which lists the folder.)
    table = _table(path)
    assert _as_dict(table.read()) == expected

    # A compaction that dropped rows, cut short before deleting the parts: the dropped rows
    # do not come back from the parts it already holds.
    dropped = table.read().filter(pa.compute.equal(table.read()["key"], "t1"))
    assert dropped.num_rows > 0
    table.compact(drop=lambda t: pa.compute.equal(t["key"], "t1"))
    parts.mkdir(parents=True)
    for name in saved.iterdir():
        shutil.copy(name, parts / name.name)
    left = {k: v for k, v in expected.items() if k[0] != "t1"}
    assert _as_dict(_table(path).read()) == left
    # ... and the next driver's compaction clears them.
    table = _table(path)
    table.compact()
    assert _files(path) == [] and _as_dict(table.read()) == left


def _logged(path, log_rows=10_000) -> PartedTable:
    return PartedTable(path, ("key", "step"), lambda _: SCHEMA, atomic_write_bytes, fan_in=4,
                       log_rows=log_rows)


def test_logged_writes_are_read_while_open_and_sealed_into_parts_when_full(tmp_path):
    path = tmp_path / "t.parquet"
    table = _logged(path, log_rows=20)
    expected = _random_writes(table, 60)
    # Sealed every 20 rows into a level-0 part (merged by fours), the newest writes in the log.
    names = _files(path)
    assert names[-1].startswith("log-") and sum(n.startswith("log-") for n in names) == 1
    assert any(n.startswith("L") for n in names)
    assert _as_dict(table.read()) == expected
    assert _as_dict(_logged(path).read()) == expected          # another process, from disk
    table.compact()
    assert _files(path) == [] and _as_dict(pq.read_table(path)) == expected


def test_a_log_write_cut_short_is_skipped_and_the_next_writer_seals_the_log(tmp_path):
    path = tmp_path / "t.parquet"
    table = _logged(path)
    expected = _random_writes(table, 30)
    (log,) = _files(path)
    # A driver killed in the middle of a write: a record whose bytes stop short.
    with open(tmp_path / PARTS_DIR / "t" / log, "ab") as f:
        f.write((4096).to_bytes(8, "little") + b"\xff" * 100)
    assert _as_dict(_logged(path).read()) == expected
    # The next driver seals the old log (as the part of its number) before its first write.
    again = _logged(path)
    more = _random_writes(again, 10, seed=1)
    seq = int(log[4:13])
    assert f"L0-{seq:09d}-{seq:09d}.arrow" in _files(path)
    assert sum(n.startswith("log-") for n in _files(path)) == 1 and log not in _files(path)
    assert _as_dict(_logged(path).read()) == {**expected, **more}


def test_a_log_cut_short_before_its_first_write_is_no_table(tmp_path):
    # A driver killed (or a disk filled) in the middle of its first write: a log with no whole
    # record is nothing written, so readers say "not found" instead of failing on no rows.
    sweep = tmp_path / "sweep"
    folder = sweep / PARTS_DIR / "trials"
    folder.mkdir(parents=True)
    (folder / "log-000000001.arrows").write_bytes((4096).to_bytes(8, "little") + b"\xff" * 100)
    assert not table_exists(sweep, TRIALS_FILE)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_trials(sweep)


def test_a_seal_cut_short_is_not_read_twice_and_is_cleared(tmp_path):
    path = tmp_path / "t.parquet"
    table = _logged(path)
    expected = _random_writes(table, 20)
    (log,) = _files(path)
    saved = (tmp_path / PARTS_DIR / "t" / log).read_bytes()
    table.seal()
    (tmp_path / PARTS_DIR / "t" / log).write_bytes(saved)   # the part written, the log not gone
    reader = _logged(path)
    assert _as_dict(reader.read()) == expected
    assert reader.read().num_rows == len(expected)
    again = _logged(path)
    _random_writes(again, 1, seed=2)
    assert log not in _files(path)


def test_a_failed_log_write_loses_no_earlier_write_and_the_log_is_sealed(tmp_path, monkeypatch):
    import orchestrator.sinks.parted as parted

    path = tmp_path / "t.parquet"
    table = _logged(path)
    expected = _random_writes(table, 10)
    (log,) = _files(path)

    def full(_fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(parted.os, "fsync", full)
        with pytest.raises(OSError, match="No space"):
            table.append([{"key": "lost", "step": 0, "value": 1.0}], SCHEMA)
    assert _as_dict(_logged(path).read()) == expected      # the failed write cut off the file
    more = _random_writes(table, 5, seed=3)
    assert log not in _files(path) and f"L0-{log[4:13]}-{log[4:13]}.arrow" in _files(path)
    assert _as_dict(_logged(path).read()) == {**expected, **more}
    assert ("lost", 0) not in _as_dict(table.read())


def _trial(i: int) -> tuple[TrialInfo, TrialOutcome]:
    key = f"k{i:05d}"
    info = TrialInfo(key=key, arm=f"arm{i % 7}", seed=i % 3, config={"seed": i % 3, "lr": 0.1},
                     backbone="vit_micro", tags={})
    outcome = TrialOutcome(key, "completed", "completed all 5 epochs", 5, 1.0,
                           final={"val/top1": 0.5}, best={"val/top1": 0.6}, params=1, macs=2)
    return info, outcome


def _feed(sink: ParquetSink, first: int, last: int) -> None:
    for i in range(first, last):
        info, outcome = _trial(i)
        rng = random.Random(i)                   # metrics as real ones are: not compressible
        sink.trial_started(info)
        for epoch in range(1, 6):
            sink.epoch(info.key, epoch, {"val/top1": rng.random(), "train/loss": rng.random()})
        sink.trial_finished(outcome)


def _start(sink: ParquetSink, directory) -> None:
    sink.start(sweep_name="scale", storage_dir=str(directory), spec={"name": "scale"},
               metric="val/top1", mode="max", total_trials=None)


def test_a_trial_end_writes_what_it_adds_not_the_whole_table(tmp_path, monkeypatch):
    """Bytes written (log records, sealed and merged parts) by the trial ends 0-127 and 256-383,
    with logs sealed every 40 rows: windows with the same seals and merges (16 epoch seals and
    one level-0 merge, 3 trial seals each). The old layout (both files rewritten at each end)
    wrote 3.7 times more in the second window of 64; the log and parts write the same."""
    import orchestrator.sinks.parted as parted

    written: list[int] = []

    def counting(path, data):
        written.append(len(data))
        atomic_write_bytes(path, data)

    def counted_record(table):
        record = real_record(table)
        written.append(len(record))
        return record

    real_record = parted._log_record
    monkeypatch.setattr(tables, "atomic_write_bytes", counting)
    monkeypatch.setattr(parted, "_log_record", counted_record)
    monkeypatch.setattr(tables, "LOG_ROWS", 40)
    sink = ParquetSink(compact_interval_s=1e9)        # no compaction but at the end
    _start(sink, tmp_path)

    def bytes_for(first: int, last: int) -> int:
        written.clear()
        _feed(sink, first, last)
        return sum(written)

    early = bytes_for(0, 128)
    _feed(sink, 128, 256)
    late = bytes_for(256, 384)
    assert late < 1.25 * early, (early, late)
    sink.finish()
    assert len(read_trials(tmp_path)) == 384 and len(read_epochs(tmp_path)) == 384 * 5


def test_readers_see_the_parts_before_compaction_and_the_documented_files_after(tmp_path):
    sink = ParquetSink(compact_interval_s=600.0)
    _start(sink, tmp_path)
    _feed(sink, 0, 40)
    # Mid-sweep: the documented files do not exist yet (the next compaction: at the end, or 2 s
    # after the start at the earliest); the readers include the parts.
    assert not (tmp_path / TRIALS_FILE).exists()
    assert table_exists(tmp_path, TRIALS_FILE) and table_exists(tmp_path, EPOCHS_FILE)
    assert len(read_trials(tmp_path)) == 40 and len(read_epochs(tmp_path)) == 200
    # A driver killed here (no finish): the next driver's sink folds the parts in at start.
    sink = ParquetSink()
    _start(sink, tmp_path)
    assert not (tmp_path / PARTS_DIR).exists()
    assert len(pd.read_parquet(tmp_path / TRIALS_FILE)) == 40
    _feed(sink, 20, 50)                              # 20-39 replayed (upserts), 40-49 new
    sink.finish()
    trials = pd.read_parquet(tmp_path / TRIALS_FILE)
    epochs = pd.read_parquet(tmp_path / EPOCHS_FILE)
    assert list(trials["trial_key"]) == [f"k{i:05d}" for i in range(50)]
    assert len(epochs) == 250 and not epochs.duplicated(["trial_key", "epoch"]).any()
    assert read_trials(tmp_path).equals(read_trials(tmp_path))
    assert not (tmp_path / PARTS_DIR).exists()


def test_the_documented_files_are_refreshed_while_the_sweep_runs(tmp_path):
    sink = ParquetSink(compact_interval_s=0.0, compact_cost_factor=0.0)   # at every trial end
    _start(sink, tmp_path)
    _feed(sink, 0, 3)
    assert len(pd.read_parquet(tmp_path / TRIALS_FILE)) == 3
    assert len(pd.read_parquet(tmp_path / EPOCHS_FILE)) == 15


@pytest.mark.parametrize("name", [TRIALS_FILE, EPOCHS_FILE])
def test_an_older_sweep_with_plain_files_is_read_and_continued(tmp_path, name):
    """A sweep written before the parts layout (plain files, no sequence metadata) resumes."""
    sink = ParquetSink()
    _start(sink, tmp_path)
    _feed(sink, 0, 4)
    sink.finish()
    plain = pq.read_table(tmp_path / name).replace_schema_metadata(None)
    pq.write_table(plain, tmp_path / name)
    sink = ParquetSink()
    _start(sink, tmp_path)
    _feed(sink, 2, 6)
    sink.finish()
    assert len(read_trials(tmp_path)) == 6 and len(read_epochs(tmp_path)) == 30
