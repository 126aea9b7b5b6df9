"""`python -m orchestrator.report SWEEP_DIR`: write (or rewrite) a sweep's report."""

import sys

from orchestrator.report.writer import main

sys.exit(main())
