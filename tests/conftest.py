"""Suite-wide settings.

Tiers: tests that start Ray, a sweep driver, a CLI process or a server are marked `system`
(whole files in SYSTEM_FILES, single tests with `@pytest.mark.system`, and any test that uses
the shared Ray session); `python -m pytest -m "not system"` is the fast tier of unit and
contract tests for the inner loop. CI runs everything.

One intra-op thread for the in-process model tests: on a 2-core machine shared with other work,
two OpenMP threads spin-wait on each other (benchmarks/RESULTS.md, trainer section); the 224-px
paper-model checks took 134 s with torch's default of 2 threads and 33 s with 1 under the same
load. Subprocesses and Ray trials set their own thread counts. The in-process sweeps share
one Ray session.
"""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SYSTEM_FILES = {
    "test_arm_scheduler.py", "test_cluster.py", "test_driver_lock.py", "test_faults.py",
    "test_grow.py",
    "test_mlflow_ui.py", "test_ray_up.py", "test_signals.py", "test_sweep.py", "test_sync.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).name in SYSTEM_FILES or "ray_session" in getattr(
                item, "fixturenames", ()):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every in-process sweep of the run (ray.init costs seconds)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    from orchestrator.tune.ray_compat import preloading_workers
    from orchestrator.tune.runner import TRIAL_MODULES

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", _system_config=preloading_workers(TRIAL_MODULES))
    yield
    ray.shutdown()
