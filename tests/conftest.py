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

# Ray starts its workers at niceness 15 (its `worker_niceness` setting), below every ordinary
# process. On a machine shared with other CPU-bound work the trials then get almost no CPU (two
# busy loops beside the suite leave a nice-15 worker about 3% of a core), so a sweep of seconds
# takes minutes and the suite measures the scheduler's priorities, not our code. The suite's
# Ray workers take their share like any process; every Ray the suite starts (the shared session,
# each sweep driver, each node) inherits this from the environment. A user's sweep keeps Ray's
# default.
os.environ.setdefault("RAY_worker_niceness", "0")

SYSTEM_FILES = {
    "test_arm_scheduler.py", "test_cluster.py", "test_driver_lock.py", "test_faults.py",
    "test_grow.py",
    "test_mlflow_ui.py", "test_ray_up.py", "test_signals.py", "test_sweep.py", "test_sync.py",
}


# How the suite's workers (pytest-xdist, `--dist loadfile`) share the tests: each file is one unit
# of work, so a module fixture (a shared sweep) runs once, in one worker; the tests of SPLIT_FILES
# share nothing above function scope and each runs one or two sweep drivers of a minute or more,
# so each is a unit of its own and they spread over the workers instead of queueing in one.
# (xdist's own `loadgroup` cannot do this here: it renames a test's id, which pytest 9 ignores.)
SPLIT_FILES = {"test_cluster.py", "test_signals.py", "test_storage_faults.py"}
# The units start in this order, the longest first, so the short files fill in around them
# instead of one long test starting last (the durations: `pytest --durations=40`).
LONGEST_FIRST = ["test_sweep.py", "test_arm_scheduler.py", "test_grow.py", "test_sweep_rule.py",
                 "test_storage_faults.py",
                 "test_cluster.py", "test_signals.py", "test_faults.py", "test_gpu_check.py",
                 "test_ray_compat.py", "test_sync.py", "test_train.py", "test_mlflow_ui.py",
                 # then the fast tier's longest files (-m "not system" runs only these)
                 "test_timm_models.py", "test_profile.py", "test_models.py", "test_dry_run.py",
                 "test_registry.py", "test_report_seed_rule.py", "test_mlflow_store.py",
                 "test_questions.py", "test_report.py"]


def _rank(item) -> int:
    name = Path(str(item.fspath)).name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).name in SYSTEM_FILES or "ray_session" in getattr(
                item, "fixturenames", ()):
            item.add_marker(pytest.mark.system)
    # With -x (the mutation check runs so) the first failure matters, not the total time: the
    # files keep their collection order, so a break the unit tests catch is found in seconds.
    if not config.option.maxfail:
        items.sort(key=_rank)                  # stable: each file keeps its own order


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SplitLoadFile(LoadFileScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            config.option.loadscopereorder = False     # keep LONGEST_FIRST's order

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if Path(path).name in SPLIT_FILES else path

    return SplitLoadFile(config, log)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every in-process sweep of the run (ray.init costs seconds)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    from orchestrator.tune.runner import init_local_ray

    init_local_ray(num_cpus=2)
    yield
    ray.shutdown()
