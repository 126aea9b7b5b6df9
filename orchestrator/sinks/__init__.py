"""Where a sweep's results go. The driver hands every trial event to each sink in turn (`base`:
the event types and the `Sink` protocol): `parquet` (the system of record, two tables kept by
`parted`), `mlflow` (one run per trial, written off the event loop by `background`, browsed
through the saved view of `mlflow_view`) and `progress` (the live terminal view)."""
