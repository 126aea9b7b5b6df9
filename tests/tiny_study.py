"""The smallest real study the sweep tests run: LocalViT-micro against ViT-micro on digits, one
seed, 3 epochs of 4 steps, one CPU per trial (seconds per trial on 2 cores)."""


def two_arm_spec(name: str, run: str) -> str:
    """The spec's YAML text with sweep `name` and the flow mapping `run` (e.g.
    "{max_failures: 1}")."""
    return f"""\
name: {name}
base:
  model: {{backbone: localvit_micro}}
  data: {{name: digits}}
  train: {{epochs: 3, batch_size: 32, steps_per_epoch: 4, lr: 2.0e-3, warmup_epochs: 0,
          ema: false, amp: false}}
  aug: {{auto_augment: null, color_jitter: 0.0, reprob: 0.0, mixup: 0.0, cutmix: 0.0}}
  device: cpu
base_arm: localvit
baseline: {{model.backbone: vit_micro}}
seeds: [0]
search: {{metric: val/top1, mode: max}}
run: {run}
"""
