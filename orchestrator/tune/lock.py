"""One sweep, one driver: an exclusive lock on `<sweep folder>/driver.lock`.

Two drivers on one sweep would both restore the Tune experiment, both run its trials and both
write its Parquet tables and MLflow runs. The lock is an `flock` held for the driver's lifetime:
the kernel releases it when the process ends in any way (SIGKILL included), so a lock left by a
killed driver is stale by construction and the next driver takes it over. The file also records
the holder's pid, host and start time, for the message a refused driver prints.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
from pathlib import Path

from orchestrator.errors import StorageError
from orchestrator.layout import LOCK_FILE

__all__ = ["LOCK_FILE", "DriverLock"]



class DriverLock:
    """`with DriverLock(sweep_dir, where):` holds the sweep's lock or raises StorageError."""

    def __init__(self, sweep_dir: str | os.PathLike, where: str = "run.storage") -> None:
        self.path = Path(sweep_dir) / LOCK_FILE
        self.where = where
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise StorageError(
                f"{self.where}: another driver is running this sweep (pid "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
                f"{holder.get('started', '?')}; lock {self.path}); wait for it to finish or stop "
                f"it, then run again with --resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        # The file stays: unlinking it could let a driver that opened it just before lock an
        # orphaned inode while a third one locks a new file.
        if self._fd is not None:
            os.close(self._fd)          # closing releases the flock
            self._fd = None

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
