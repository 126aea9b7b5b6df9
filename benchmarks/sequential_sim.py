"""The sequential decision rule on simulated paired studies (issue 23, item 4), as a Markdown table.

Each study has 5 questions with N(effect, 1) paired differences, one per seed. Under the null
(effect 0): the family-wise rate of any better/worse verdict with its Monte-Carlo standard error.
At a 1-SD effect on every question: the share of questions decided "better" and the mean paired
seeds per question, for the sequential rule and for fixed `start` and fixed `max` seeds with Holm
over the 5 questions (the same draws for all three).

    python benchmarks/sequential_sim.py [--studies 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import time

from orchestrator.sequential import Design
from orchestrator.sequential.simulation import simulate

DESIGNS = ((3, 8), (2, 6), (3, 10))
RULES = (  # label, spending, batch, calibrate
    ("O'Brien-Fleming, batch 1", "obrien-fleming", 1, True),
    ("O'Brien-Fleming, batch 2", "obrien-fleming", 2, True),
    ("Pocock, batch 1", "pocock", 1, True),
    ("power family rho 8, batch 1", "power:8", 1, True),
    ("O'Brien-Fleming, batch 1, plain carry-over", "obrien-fleming", 1, False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    began = time.process_time()
    print(f"{args.studies} studies of 5 questions per row; alpha 0.05; power and seeds at a "
          f"1-SD effect; fixed designs: Holm over the 5 questions.\n")
    print("| start-max | rule | FWER (± MC s.e.) | power: seq / fixed-start / fixed-max "
          "| mean seeds at 1 SD: seq / fixed-start / fixed-max | mean seeds, null |")
    print("|---|---|---|---|---|---|")
    for start, max_n in DESIGNS:
        for label, spending, batch, calibrate in RULES:
            design = Design(spending=spending, start=start, max=max_n, batch=batch,
                            calibrate=calibrate)
            null = simulate(design, effect=0.0, studies=args.studies, seed=args.seed)
            alt = simulate(design, effect=1.0, studies=args.studies, seed=args.seed + 1)
            seq, lo, hi = alt["sequential"], alt[f"fixed-{start}"], alt[f"fixed-{max_n}"]
            print(f"| {start}-{max_n} | {label} | {null['sequential'].any_rate:.4f} ± "
                  f"{null['sequential'].any_se:.4f} | {seq.power:.3f} / {lo.power:.3f} / "
                  f"{hi.power:.3f} | {seq.mean_seeds:.2f} / {lo.mean_seeds:.0f} / "
                  f"{hi.mean_seeds:.0f} | {null['sequential'].mean_seeds:.2f} |")
        fixed = simulate(Design(start=start, max=max_n), effect=0.0, studies=args.studies,
                         seed=args.seed)
        print(f"| {start}-{max_n} | fixed {start} / fixed {max_n} seeds, Holm (null) | "
              f"{fixed[f'fixed-{start}'].any_rate:.4f} / {fixed[f'fixed-{max_n}'].any_rate:.4f}"
              f" | | | |")
    print(f"\nCPU time: {time.process_time() - began:.0f} s")


if __name__ == "__main__":
    main()
