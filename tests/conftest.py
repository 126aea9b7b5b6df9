"""Suite-wide settings.

One intra-op thread for the in-process model tests: on a 2-core machine shared with other work,
two OpenMP threads spin-wait on each other (benchmarks/RESULTS.md, trainer section); the 224-px
paper-model checks took 134 s with torch's default of 2 threads and 33 s with 1 under the same
load. Subprocesses and Ray trials set their own thread counts.
"""

import torch

torch.set_num_threads(1)
