"""Ports on 127.0.0.1 for the servers the tests start (MLflow's UI, moto's S3, sshd, Ray)."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float) -> None:
    """Until something listens on 127.0.0.1:`port`; fails if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not listening(port):
        assert proc.poll() is None, f"{what} exited before it listened on port {port}"
        assert time.monotonic() < deadline, f"{what} did not listen within {timeout:.0f} s"
        time.sleep(0.1)
