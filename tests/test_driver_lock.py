"""One sweep, one driver: a second driver is refused while the first lives (exit 2, naming its
pid and host), and the lock of a killed driver is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from orchestrator.sweep import main
from orchestrator.tune.lock import LOCK_FILE, DriverLock

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"

HOLD = """
import sys, time
from orchestrator.tune.lock import DriverLock
DriverLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_driver_is_refused_and_a_killed_drivers_lock_is_taken_over(tmp_path, capsys):
    storage = tmp_path / "sweeps"
    sweep = storage / "quickstart"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(sweep)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main([str(SPACES / "quickstart.yaml"), "--resume",
                     "--set", f"run.storage={storage}"])
        err = capsys.readouterr().err
        assert code == 2
        assert (f"quickstart.yaml: run.storage: another driver is running this sweep (pid "
                f"{holder.pid} on host {socket.gethostname()}, since ") in err, err
        assert sorted(p.name for p in sweep.iterdir()) == [LOCK_FILE]     # nothing else made
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's file is still there; its flock died with it.
    with DriverLock(sweep):
        assert json.loads((sweep / LOCK_FILE).read_text())["pid"] == os.getpid()
