"""The cluster path, proven on this machine without a cloud.

- `ray_cluster.yaml` passes Ray's own cluster-config schema (after Ray fills its defaults, as
  `ray up` does), keeps every service on 127.0.0.1 with token authentication, and its node
  types are what the driver's capacity check reads.
- A two-node Ray cluster (`ray start --head` + `ray start --address`, one CPU each, on
  127.0.0.1): the sweep runs through `--address`, keeps Tune's state and checkpoints in S3 (moto's
  server on 127.0.0.1), trials train on both nodes (epochs.parquet records each epoch's node),
  and a driver stopped with SIGTERM resumes from S3 to a complete result.
- A worker node killed mid-trial: its trial is retried on the other node from its last
  checkpoint and completes; every epoch once, the early ones still recorded on the lost node.

Every process the tests start (Ray nodes, moto, drivers) is stopped by pid at the end.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import driver_process
import pandas as pd
import psutil
import pytest
import yaml
from local_ports import free_port, wait_listening

from tiny_study import two_arm_spec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
RAY = str(Path(sys.executable).with_name("ray"))      # the CLI of this Python's Ray
pytestmark = pytest.mark.timeout(600)


# ------------------------------------------------------------------------- ray_cluster.yaml

def test_ray_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(prepare_config(config))      # raises jsonschema.ValidationError if not
    broken = {**config, "head_node_typ": "head"}
    with pytest.raises(Exception, match="head_node_typ"):
        validate_config(prepare_config(broken))


def test_ray_cluster_yaml_keeps_services_private_and_authenticated():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    text = CLUSTER_YAML.read_text()
    assert "0.0.0.0" not in text
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "--host 127.0.0.1 --port 5000" in head                    # the MLflow UI
    for start in (head, worker):
        assert "RAY_AUTH_MODE=token" in start and "--disable-usage-stats" in start
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("pip install --quiet -c ~/localvit/constraints.txt -e ~/localvit" in c
               for c in config["setup_commands"])
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}   # no trials on the head
    gpus = {n: t for n, t in types.items() if t.get("resources", {}).get("GPU")}
    assert gpus and all(t["min_workers"] == 0 for t in gpus.values())   # scale from zero
    assert any(t["node_config"].get("InstanceMarketOptions") == {"MarketType": "spot"}
               for t in gpus.values())


def _plan(tmp_path: Path, run: str):
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec

    spec_file = tmp_path / "capacity.yaml"
    spec_file.write_text(two_arm_spec("capacity", run))
    return build_plan(load_spec(spec_file, []), source="capacity.yaml", data_required=False)


def test_capacity_waits_for_a_node_type_the_autoscaler_can_add_and_refuses_others(
        ray_session, tmp_path):
    from orchestrator.errors import SpecError
    from orchestrator.tune.cluster import check_capacity, node_types

    types = {t.name: t for t in node_types(CLUSTER_YAML)}
    assert types["gpu_1x"].resources == {"CPU": 8.0, "GPU": 1.0}
    assert types["gpu_1x"].max_count == 8 and types["head"].max_count == 0

    # One GPU per trial on this CPU-only Ray: ray_cluster.yaml's autoscaler can add a GPU node.
    said = []
    check_capacity(_plan(tmp_path, "{resources_per_trial: {cpu: 4, gpu: 1}}"), cluster=True,
                   notify=said.append, bootstrap=CLUSTER_YAML)
    assert len(said) == 1 and "gpu_1x, gpu_1x_spot" in said[0], said

    # 16 CPUs: no node has them and no node type of that config either.
    with pytest.raises(SpecError, match=r"16 CPU and 1 GPU .* node types \(head, gpu_1x, "
                                        r"gpu_1x_spot\) give at most 8 CPU and 1 GPU"):
        check_capacity(_plan(tmp_path, "{resources_per_trial: {cpu: 16, gpu: 1}}"),
                       cluster=True, bootstrap=CLUSTER_YAML)
    # A cluster nobody scales: what is alive is all there is.
    with pytest.raises(SpecError, match="no autoscaler that could add nodes"):
        check_capacity(_plan(tmp_path, "{resources_per_trial: {cpu: 1, gpu: 1}}"),
                       cluster=True, bootstrap=tmp_path / "none.yaml")
    # And what fits a node is fine, with nothing to say.
    check_capacity(_plan(tmp_path, "{resources_per_trial: {cpu: 1}}"), cluster=True,
                   notify=said.append, bootstrap=tmp_path / "none.yaml")
    assert len(said) == 1


# ------------------------------------------------------------------------- local processes

def _wait(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> list[int]:
    """Stop a process and everything it started (Ray's gcs, raylet and workers); their pids."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    _, alive = psutil.wait_procs(family, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return [p.pid for p in family]


class Cluster:
    """Ray nodes on 127.0.0.1, each a `ray start --block` process of its own."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.env, self.tmp = env, tmp
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.pids: list[int] = []
        # Short: Ray's unix sockets live under it (a pytest tmp_path is too long for them).
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "w") as log:
            proc = subprocess.Popen([RAY, "start", "--block", "--num-cpus=1",
                                     "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                     *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.nodes.append(proc)
        return proc

    def alive_nodes(self) -> int:
        out = subprocess.run(
            [sys.executable, "-c",
             f"import ray; ray.init(address='{self.address}', logging_level='ERROR');"
             "print(sum(n['Alive'] for n in ray.nodes()))"],
            env=self.env, capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0

    def up(self, workers: int = 1) -> None:
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false",
                     f"--temp-dir={self.ray_tmp}"], "head")
        for i in range(workers):
            self._start([f"--address={self.address}", "--dashboard-agent-listen-port=0"],
                        f"worker{i}")
        _wait(lambda: self.alive_nodes() == 1 + workers, f"{1 + workers} Ray nodes")

    def kill(self, proc: subprocess.Popen) -> None:
        self.pids += _stop(proc, signal.SIGKILL)

    def down(self) -> None:
        for proc in reversed(self.nodes):
            self.pids += _stop(proc)
        leftover = [p for p in self.pids if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not leftover, f"Ray processes left running: {leftover}"
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture
def node_env():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def s3(node_env, tmp_path):
    """moto's S3 server on 127.0.0.1 with one bucket; the env every node and driver gets."""
    port = free_port()
    with open(tmp_path / "moto.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    node_env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                    AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")

    try:
        wait_listening(port, proc, "moto's S3 server", 60)
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", access_key="test",
                               secret_key="test", region="us-east-1",
                               allow_bucket_creation=True)
        fs.create_dir("sweeps")
        yield fs
    finally:
        _stop(proc)


@pytest.fixture
def cluster(node_env, tmp_path):
    c = Cluster(tmp_path, node_env)
    try:
        yield c
    finally:
        c.down()


def _driver(cluster: Cluster, spec: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """The sweep through `--address` on the cluster; each run its own log."""
    log = spec.with_suffix(f".{len(list(spec.parent.glob('*.driver*.log')))}.driver.log")
    return driver_process.start([str(spec), "--address", cluster.address, *args], log,
                                env=cluster.env), log


# ------------------------------------------------------------------------- the cluster tests

def test_two_node_sweep_keeps_tune_state_in_s3_and_resumes_from_it(cluster, s3, tmp_path):
    import pyarrow.fs as pafs

    cluster.up(workers=1)
    spec = tmp_path / "cluster.yaml"
    spec.write_text(two_arm_spec("cluster", "{resources_per_trial: {cpu: 1}, max_concurrent: 2}"))
    storage = tmp_path / "sweeps"
    # 8 epochs: long enough that the two trials overlap, one per node. (With 3 short ones, a
    # trial could end before the other's actor was up, and Tune would reuse its actor there.)
    args = ["--set", f"run.storage={storage}", "--set", "run.tune_storage=s3://sweeps/tune",
            "--set", "base.train.epochs=8"]

    proc, log = _driver(cluster, spec, *args)
    try:
        # Both trials running: each has reported a first epoch, on its own node.
        driver_process.wait_for(proc, log, lambda text: text.count(" epoch 1 ") >= 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 1, log.read_text()[-3000:]
    finally:
        driver_process.kill(proc)
    assert "--resume" in log.read_text()

    proc, log = _driver(cluster, spec, *args, "--resume")
    try:
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        driver_process.kill(proc)

    sweep = storage / "cluster"
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert sorted(trials["arm"]) == ["baseline", "localvit"]
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 8).all()
    epochs = pd.read_parquet(sweep / "epochs.parquet")
    assert len(epochs) == 16 and not epochs.duplicated(["trial_key", "epoch"]).any()
    # Both nodes trained (one CPU each, two trials at a time), each epoch says where.
    assert epochs["node"].notna().all() and epochs["node"].nunique() == 2, epochs
    # Tune's experiment and the checkpoints are in the bucket, nothing of it on local disk.
    files = [f.path for f in s3.get_file_info(pafs.FileSelector("sweeps/tune", recursive=True))]
    assert "sweeps/tune/cluster/tuner.pkl" in files
    assert sum(f.endswith("/checkpoint.pt") for f in files) >= 2, files
    assert not (sweep / "tune").exists()
    assert (sweep / "report" / "arms.csv").is_file()


def test_a_lost_worker_node_moves_its_trial_which_goes_on_from_its_checkpoint(cluster, tmp_path):
    cluster.up(workers=1)
    worker = cluster.nodes[1]
    spec = tmp_path / "lost.yaml"
    spec.write_text(two_arm_spec(
        "lost", "{resources_per_trial: {cpu: 1}, max_concurrent: 2, max_failures: 2}"))
    storage = tmp_path / "sweeps"
    shared = tmp_path / "shared"          # the "shared mount" form of run.tune_storage
    proc, log = _driver(cluster, spec, "--set", f"run.storage={storage}", "--set",
                        f"run.tune_storage={shared}", "--set", "base.train.epochs=8")
    try:
        # Both trials running (one per node) and past their first checkpoint: lose the worker.
        # (Two distinct trials' epoch lines: the status panel's "rung: epoch 2" does not count.)
        driver_process.wait_for(proc, log, lambda text: len(set(
            re.findall(r"^\[[\d:]+\] trial (\w{8}) .* epoch 2 ", text, re.MULTILINE))) >= 2)
        cluster.kill(worker)
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        driver_process.kill(proc)

    trials = pd.read_parquet(storage / "lost" / "trials.parquet")
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 8).all(), trials
    epochs = pd.read_parquet(storage / "lost" / "epochs.parquet")
    epochs = epochs.sort_values(["trial_key", "epoch"])
    assert not epochs.duplicated(["trial_key", "epoch"]).any()
    moved = []
    for key, curve in epochs.groupby("trial_key"):
        assert list(curve["epoch"]) == list(range(1, 9)), curve
        nodes = list(dict.fromkeys(curve["node"]))
        if len(nodes) > 1:
            moved.append((key, nodes))
    # One trial ran on the lost node and finished on the other; its early epochs are still the
    # lost node's (a retry from scratch would have reported them again, from the other node, and the
    # upsert by (trial, epoch) would name the other node for every epoch). The lost node keeps at
    # least the epochs up to the checkpoint the retry started from.
    assert len(moved) == 1, epochs[["trial_key", "epoch", "node"]]
    key, nodes = moved[0]
    assert len(nodes) == 2
    curve = epochs[epochs["trial_key"] == key]
    lost_epochs = list(curve[curve["node"] == nodes[0]]["epoch"])
    assert lost_epochs == list(range(1, len(lost_epochs) + 1)) and 1 <= len(lost_epochs) < 8, curve


def test_a_ray_client_address_is_refused_with_the_way_that_works(tmp_path, capsys):
    from orchestrator.sweep import main

    spec = tmp_path / "client.yaml"
    spec.write_text(two_arm_spec("client", "{}"))
    assert main([str(spec), "--address", "ray://head:10001",
                 "--set", f"run.storage={tmp_path / 's'}"]) == 2
    err = capsys.readouterr().err
    assert "Ray Client (ray://) addresses are not supported" in err and "--address auto" in err
    assert not (tmp_path / "s").exists()


def test_a_trial_trains_on_what_ray_gave_it():
    from orchestrator.tune.trainable import fit_to_resources
    from trainers.config import train_config_from_dict

    cfg = train_config_from_dict({"data": {"name": "digits", "num_workers": 8}, "device": "auto"})
    on_gpu = fit_to_resources(cfg, 4, 0.5)          # half a GPU, 4 CPUs
    assert (on_gpu.device, on_gpu.threads, on_gpu.data.num_workers) == ("auto", 4, 3)
    on_cpu = fit_to_resources(cfg, 1, 0)            # no GPU given: never take the node's GPU
    assert (on_cpu.device, on_cpu.threads, on_cpu.data.num_workers) == ("cpu", 1, 0)
    assert fit_to_resources(cfg.model_copy(update={"device": "cuda"}), 2, 1).device == "cuda"
    # Only keys a checkpoint's resume does not compare change (a trial may resume elsewhere).
    from orchestrator._flatten import flatten_config
    from trainers.train import _RUNTIME_KEYS

    for fitted in (on_gpu, on_cpu):
        a, b = flatten_config(cfg.to_dict()), flatten_config(fitted.to_dict())
        assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= _RUNTIME_KEYS
