"""`ray up` with ray_cluster.yaml's own setup and start commands, on this machine.

No cloud is reachable from CI, so the cluster is Ray's local provider against an sshd on
127.0.0.1: the local variant of `ray_cluster.yaml` keeps its file mounts, setup commands and
head start commands and replaces only the provider, the SSH login and the node types. `ray up`
syncs the project to ~/localvit, builds ~/venv with it, starts Ray (token authentication on, the
dashboard and MLflow's UI on 127.0.0.1); the sweep runs through `ray exec` with `--address
auto`, its results are checked, and `ray down` leaves no Ray process behind.

This test owns the machine while it runs: the cluster's start commands and `ray down` run
`ray stop` (every Ray process of the machine), and it writes to the login user's home
(~/localvit, ~/venv, ~/.bashrc, ~/ray_bootstrap_config.yaml; removed or restored afterwards).
So it is marked `ray_up`, left out of the default run, and `.ci/run` runs it on its own after
the suite: `python -m pytest -m ray_up -n 0`. It needs root (the SSH login) and Debian's
openssh-server, rsync and netcat-openbsd; without them it skips and says why.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from local_ports import free_port, wait_listening

from tiny_study import two_arm_spec

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
HOME = Path.home()
pytestmark = [pytest.mark.ray_up, pytest.mark.timeout(900)]

# What the cluster's commands create in the login user's home.
CREATED = ("localvit", "venv", "ray_bootstrap_config.yaml", "ray_bootstrap_key.pem",
           "mlflow-ui.log", "mlflow-ui.pid")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the local provider logs in over SSH as root here; run as root"
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "nc"):
        if not shutil.which(tool):
            return (f"{tool} not found: apt-get install -y openssh-server rsync netcat-openbsd")
    if any((HOME / name).exists() for name in CREATED[:2]):
        return f"{HOME}/localvit or {HOME}/venv exists already: not this test's to overwrite"
    return None


def _ray_processes() -> list[int]:
    names = ("raylet", "gcs_server", "dashboard.py", "monitor.py", "log_monitor.py")
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(n in cmd for n in names):
            out.append(p.info["pid"])
    return out


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1 that lets this test's key in as root; stopped by pid."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    if _ray_processes():
        pytest.skip("Ray is running on this machine: `ray stop` in the cluster commands would "
                    "kill it; run this test on its own (pytest -m ray_up -n 0)")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "host_key")], check=True)
    shutil.copy(f"{key}.pub", tmp_path / "authorized_keys")
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host_key'}\n"
        f"PidFile {tmp_path / 'sshd.pid'}\nAuthorizedKeysFile {tmp_path / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E",
                             str(tmp_path / "sshd.log")], start_new_session=True)
    try:
        wait_listening(port, proc, f"sshd (log: {tmp_path / 'sshd.log'})", 30)
        yield port, key
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _local_variant(port: int, key: Path) -> dict:
    """ray_cluster.yaml with the local provider, the test's SSH login and no cloud node types;
    its file mounts, setup and start commands unchanged."""
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    for cloud_only in ("available_node_types", "head_node_type", "max_workers"):
        config.pop(cloud_only)
    config["cluster_name"] = "localvit-local-test"
    config["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(key),
                      "ssh_proxy_command": f"nc 127.0.0.1 {port}"}
    return config


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def _ray(*args: str, cwd: Path, env: dict, timeout: int = 600) -> str:
    out = subprocess.run([RAY, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"ray {' '.join(args)} exited {out.returncode}:\n{text[-12000:]}"
    return text


def test_ray_up_runs_a_sweep_through_the_cluster_commands_and_ray_down_stops_it(sshd, tmp_path):
    port, key = sshd
    shared = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    cluster_file = tmp_path / "local.yaml"
    config = _local_variant(port, key)
    for name in ("file_mounts", "setup_commands", "head_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands"):
        assert config[name] == shared[name]
    cluster_file.write_text(yaml.safe_dump(config, sort_keys=False))
    spec = tmp_path / "onnodes.yaml"
    spec.write_text(two_arm_spec("onnodes", "{resources_per_trial: {cpu: 1}, max_concurrent: 2}"))
    storage = tmp_path / "sweeps"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    bashrc = HOME / ".bashrc"
    saved_bashrc = bashrc.read_bytes() if bashrc.exists() else None
    try:
        _ray("up", "-y", "--no-config-cache", str(cluster_file), cwd=ROOT, env=env)
        # The head's services (MLflow's UI; Ray's dashboard where its packages are installed)
        # listen on 127.0.0.1 only.
        deadline = time.monotonic() + 90
        while ("127.0.0.1", 5000) not in _listening():
            assert time.monotonic() < deadline, (HOME / "mlflow-ui.log").read_text()[-2000:]
            time.sleep(0.5)
        public = {a for a in _listening() if a[1] in (5000, 8265) and a[0] != "127.0.0.1"}
        assert not public, public
        run = (f"cd ~/localvit && python -m orchestrator.sweep {spec} --address auto "
               f"--set run.storage={storage}")
        text = _ray("exec", str(cluster_file), run, cwd=ROOT, env=env)
        assert "sweep onnodes finished" in text, text[-3000:]
        trials = pd.read_parquet(storage / "onnodes" / "trials.parquet")
        assert sorted(trials["arm"]) == ["baseline", "localvit"]
        assert (trials["status"] == "completed").all()
        # The driver ran the project copy ray up synced (no .git there: no commit to record).
        assert "git commit: unknown (not a git checkout)" in \
            (storage / "onnodes" / "spec.yaml").read_text()
        # A trial no node of this cluster can hold, and no node type its autoscaler can add:
        # exit 2 before anything starts.
        out = subprocess.run([RAY, "exec", str(cluster_file),
                              f"{run} --set name=gpus --set run.resources_per_trial.gpu=1"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and "so no trial could ever start" in out.stdout + out.stderr
        assert not (storage / "gpus").exists()
    finally:
        subprocess.run([RAY, "down", "-y", str(cluster_file)], cwd=ROOT, env=env,
                       capture_output=True, timeout=300)
        pid_file = HOME / "mlflow-ui.pid"
        if pid_file.is_file():
            with contextlib.suppress(psutil.NoSuchProcess, ValueError):
                ui = psutil.Process(int(pid_file.read_text().strip()))
                family = [ui, *ui.children(recursive=True)]
                for p in family:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
                psutil.wait_procs(family, timeout=10)
        if saved_bashrc is not None:
            bashrc.write_bytes(saved_bashrc)
        for name in CREATED:
            path = HOME / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
    deadline = time.monotonic() + 30
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(), "ray down left Ray processes running"
