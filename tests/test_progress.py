"""Progress: plain lines off a terminal, a live panel on one, and the end-of-sweep summary."""

from __future__ import annotations

import io
import re

from rich.console import Console

from orchestrator.sinks.parquet import ParquetSink
from orchestrator.sinks.progress import ProgressSink

try:
    from sink_scenario import METRIC, feed, scenario
except ImportError:  # tests/ collected as a package
    from tests.sink_scenario import METRIC, feed, scenario

ANSI = re.compile(r"\x1b\[")


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=120, color_system="standard"), buf


def test_off_a_terminal_each_event_is_one_plain_timestamped_line(tmp_path):
    console, buf = _console(terminal=False)
    sink = ProgressSink(console=console)
    feed(sink, tmp_path, total=5)
    lines = buf.getvalue().splitlines()
    assert sink.live is False
    assert not ANSI.search(buf.getvalue())
    assert all(re.match(r"\[\d\d:\d\d:\d\d\] ", line) for line in lines)
    text = "\n".join(lines)
    assert "sweep unit: 5 trials, maximizing val/top1" in lines[0]
    assert "trial k_relu act=relu6/seed0 started" in text
    assert "trial k_base baseline/seed0 epoch 2 val/top1=0.7" in text
    assert ("trial k_relu act=relu6/seed0 stopped after 1 epochs in 3.0 s, best val/top1=0.6 "
            "(asha: below the rung-1 cutoff at epoch 1)") in text
    assert "trial k_fail act=hs/seed1 failed" in text and "RuntimeError: boom" in text
    assert "sweep unit finished" in lines[-1]
    assert "1 completed, 1 stopped, 1 failed" in lines[-1]
    # 1 header + 3 started + 6 epochs + 3 finished + 1 end.
    assert len(lines) == 14


def test_on_a_terminal_a_live_panel_shows_states_best_rung_and_eta(tmp_path):
    console, buf = _console(terminal=True)
    sink = ProgressSink(console=console)
    infos, epochs, outcomes = scenario()
    # Two trials finished, one still running, two never started.
    feed(sink, tmp_path, (infos, epochs, outcomes[:2]), finish=False, total=5)
    assert sink.live is True
    panel = Console(file=io.StringIO(), width=120)
    panel.print(sink._render())
    shown = panel.file.getvalue()
    header, counts = [line for line in shown.splitlines() if "pending" in line or
                      re.search(r"\d", line)][:2]
    assert re.findall(r"\d+", counts) == ["2", "1", "1", "1", "0"]
    assert f"best {METRIC} (max): 0.8 (k_base baseline/seed0)" in shown
    assert "rung: epoch 3" in shown
    # Mean trial time 6.25 s x 3 trials left / 3 running at once at most: 0:06.
    assert "ETA 0:06" in shown
    assert "k_fail act=hs/seed1" in shown  # the running trial's row
    sink.finish()
    out = buf.getvalue()
    assert ANSI.search(out)
    assert "stopped after 1 epochs" in out  # finished trials are printed above the panel



def test_after_resume_trials_finished_earlier_count_as_finished(tmp_path):
    from orchestrator.tune.resume import finished_trials

    feed(ParquetSink(), tmp_path)            # the first driver recorded three trials
    console, buf = _console(terminal=False)
    sink = ProgressSink(console=console)
    # The runner reads them from Parquet and hands them to every sink.
    prior = finished_trials(tmp_path)
    assert sorted((t.key, t.status) for t in prior) == [
        ("k_base", "completed"), ("k_fail", "failed"), ("k_relu", "stopped")]
    sink.start(sweep_name="unit", storage_dir=str(tmp_path), spec={}, metric=METRIC, mode="max",
               total_trials=5, prior=prior)
    assert [sink._count(s) for s in ("pending", "running", "completed", "stopped", "failed")] \
        == [2, 0, 1, 1, 1]
    assert sink._best == (0.8, "k_base")
    assert sink._eta() is not None
