"""A plan run as a Ray Tune experiment. Driver side: `runner` (run_sweep: one driver per sweep,
`lock`; the cluster's capacity, `cluster`), `storage` (where the sweep and Tune's experiment live,
checked before anything is created), `resume` (what a restarted driver keeps), `tuner` (the Tuner,
its search and scheduler), `callback` (Tune's trial events to the sinks) and `state` (Tune's saved
experiment and its checkpoints). Worker side: `trainable` only. Every reach into Ray's internals is
in `ray_compat`."""
