"""What MLflow's web UI (3.17) reads from a sweep's experiment: its kind and a saved trials view.

Measured with MLflow 3.17.2's UI in headless Chromium (and read in its JS bundle):

- A fresh browser opens an experiment in the GenAI view ("Traces 0"), whatever the experiment's
  tags say: the UI picks GenAI or model training from the `workflowType` URL parameter, else from
  the browser's local storage (default `genai`). The `mlflow.experimentKind` tag
  (`custom_model_development` = "Model training") is read only when that workflow switch is off;
  it is still what MLflow's own kind selector writes, so it is set, but the link carries
  `workflowType=machine_learning` itself.
- The plain runs list shows only the parent run: the trials are folded under it, and the table
  shows no tag or metric columns until the reader picks them.
- A saved view (experiment tag `mlflow.sharedViewState.<key>`, the envelope the UI's own "Views >
  Save as new view" writes) opened with `?viewStateShareKey=<key>` sets the filter, sort, columns
  and grouping. The sweep saves "Trials by arm": trial runs only, grouped by arm with the arm's
  mean metric on the group row, each trial's arm, seed, status, epochs run, stop reason and
  metric as columns, best first. It also appears in the experiment's "Views" menu.

The link names no run ids, so it stays short for any number of trials (the compare-runs page,
`#/compare-runs?runs=[...]`, needs every id in the URL and one column per run). The runs table
loads 100 runs at a time, best first, and groups what it has loaded: with more trials than that,
"Load more" at the end of the table brings the rest before the group means cover every seed. The
metric column is the last reported value: for an early-stopped trial, the value where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from urllib.parse import quote

__all__ = ["browse_url", "experiment_tags", "trials_view_state", "trials_view_tag"]

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"   # the UI's "Model training" kind
VIEW_KEY = "trials-by-arm"
VIEW_NAME = "Trials by arm"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
UI_HOST, UI_PORT = "127.0.0.1", 5000
UI_BASE = f"http://{UI_HOST}:{UI_PORT}"


def trials_view_state(metric: str, mode: str) -> dict:
    """The runs-table state of the saved view, in the keys the 3.17 UI's share state uses.

    `metric` is the name as logged (already made MLflow-safe: no backquotes).
    """
    def col(kind: str, name: str) -> str:
        return f"{kind}.`{name}`"

    return {
        "searchFilter": "tags.sweep_role = 'trial'",
        "orderByKey": col("metrics", metric),
        "orderByAsc": mode == "min",
        "selectedColumns": [col("metrics", metric)]
        + [col("tags", t) for t in ("arm", "seed", "status", "epochs_run", "stop_reason")],
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": "arm"}]},
        # Every arm in the charts tab too, not only the first 10 rows.
        "runsHiddenMode": "SHOW_ALL",
    }


def trials_view_tag(metric: str, mode: str, existing: str | None = None) -> str:
    """The tag value: the saved-view envelope around the state (its creation time kept)."""
    now = int(time.time() * 1000)
    created = now
    with contextlib.suppress(ValueError, TypeError, KeyError):
        created = int(json.loads(existing)["createdAt"]) if existing else now
    return json.dumps({"name": VIEW_NAME, "createdAt": created, "updatedAt": now,
                       "state": json.dumps(trials_view_state(metric, mode))})


def experiment_tags(metric: str, mode: str, existing: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
    """The experiment tags that make the UI show the sweep as model training with its view."""
    existing = existing or {}
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING,
            VIEW_TAG: trials_view_tag(metric, mode, existing.get(VIEW_TAG))}


def browse_url(experiment_id: str, base: str = UI_BASE, saved_view: bool = True) -> str:
    """The UI link for an experiment: its training runs, in the saved trials view if it has one.

    Without the view (an experiment this sink never started) it is the plain runs list, where the
    trials are folded under the parent run.
    """
    url = (f"{base.rstrip('/')}/#/experiments/{quote(str(experiment_id), safe='')}/runs"
           "?workflowType=machine_learning")
    return f"{url}&viewStateShareKey={VIEW_KEY}" if saved_view else url
