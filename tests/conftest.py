"""Suite-wide settings.

One intra-op thread for the in-process model tests: on a 2-core machine shared with other work,
two OpenMP threads spin-wait on each other (benchmarks/RESULTS.md, trainer section); the 224-px
paper-model checks took 134 s with torch's default of 2 threads and 33 s with 1 under the same
load. Subprocesses and Ray trials set their own thread counts. The in-process sweeps share
one Ray session.
"""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every in-process sweep of the run (ray.init costs seconds)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()
