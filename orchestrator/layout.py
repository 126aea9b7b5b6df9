"""The sweep folder's layout: every file and folder name a sweep writes, defined once.

    <run.storage>/                 DB_FILE, ARTIFACTS_DIR/<name>/ (the default MLflow store)
      <name>/                      one sweep
        SPEC_FILE                  the resolved spec and the plan record
        TRIALS_FILE, EPOCHS_FILE   the Parquet tables (recent writes in PARTS_DIR/)
        RUNGS_FILE, DECISIONS_FILE the arm scheduler's log
        LOCK_FILE                  held by the sweep's one driver
        REPORT_DIR/                the report
        TUNE_DIR/<name>/           Ray Tune's experiment, unless run.tune_storage is set

docs/design.md ("The sweep folder") says what each holds.
"""

__all__ = ["ARTIFACTS_DIR", "DB_FILE", "DECISIONS_FILE", "EPOCHS_FILE", "LOCK_FILE", "PARTS_DIR",
           "REPORT_DIR", "RUNGS_FILE", "SPEC_FILE", "TRIALS_FILE", "TUNE_DIR"]

SPEC_FILE = "spec.yaml"
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
PARTS_DIR = "_parts"
RUNGS_FILE = "rungs.parquet"
DECISIONS_FILE = "decisions.parquet"
LOCK_FILE = "driver.lock"
REPORT_DIR = "report"
TUNE_DIR = "tune"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
