"""Early stopping of a sweep's trials. `arm_scheduler`: arm-level stopping (the seeds of an arm go
on or stop together) on Ray Tune's scheduler interface, deciding with `decisions` (pure rung
decisions and their log); `asha`: Ray's per-trial ASHA, recording why it stopped each trial. The
rules and their references: docs/design.md."""
