"""How often the ablation table calls seed noise an effect: a simulation under the null.

Every arm is the baseline (identical configurations); each cell's value is a shared per-seed
effect (what pairing removes) plus independent noise, rounded to the accuracy steps of a
validation set, so ties and no-spread differences happen as they do on real data. The rate
of arms reported "settled" is the false-positive rate at 5%: at most 5% for the fixed-seed
design, and inflated by sequential seeds (optional stopping: each added seed is another look).

``python -m search.ablation.null`` prints both rates.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from search.ablation._stats import ArmRun, summarise

BASELINE = "baseline"


@dataclass(frozen=True)
class NullRates:
    fixed: float  # settled arms at the starting seeds, per arm
    sequential: float  # settled arms after adding seeds up to max_seeds, per arm
    familywise: float  # tables with any Holm-adjusted p < 0.05 at the starting seeds
    arms: int  # arms simulated (the Monte-Carlo sample size per rate)


def simulate_null(
    tables: int = 1000,
    arms: int = 3,
    seeds: int = 3,
    max_seeds: int | None = None,
    validation_size: int = 360,
    rng_seed: int = 0,
) -> NullRates:
    rng = np.random.default_rng(rng_seed)
    names = [BASELINE] + [f"arm{i}" for i in range(arms)]
    last = max_seeds or seeds
    fixed = sequential = familywise = 0
    for _ in range(tables):
        seed_effect = rng.normal(0, 0.02, last)
        values = {
            name: np.round((0.9 + seed_effect + rng.normal(0, 0.01, last)) * validation_size)
            / validation_size
            for name in names
        }
        ran = dict.fromkeys(names, seeds)
        first_look = True
        while True:
            runs = [ArmRun(a, s, float(values[a][s]), 1.0) for a in names for s in range(ran[a])]
            rows = {row.arm: row for row in summarise(runs, BASELINE, names)}
            compared = [rows[name] for name in names[1:]]
            if first_look:
                fixed += sum(row.settled for row in compared)
                familywise += any((row.p_holm or 1.0) < 0.05 for row in compared)
                first_look = False
            grow = [r.arm for r in compared if not r.settled and ran[r.arm] < last]
            if not grow:
                break
            for name in grow:  # as run_ablation does: one more seed, baseline included
                ran[name] += 1
            ran[BASELINE] = max(ran.values())
        sequential += sum(row.settled for row in compared)
    total = tables * arms
    return NullRates(fixed / total, sequential / total, familywise / tables, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-seeds", type=int, nargs="+", default=[5, 8])
    args = parser.parse_args()
    for max_seeds in args.max_seeds:
        rates = simulate_null(args.tables, seeds=args.seeds, max_seeds=max_seeds)
        print(
            f"{args.seeds} seeds, sequential up to {max_seeds}: per-arm false-positive rate "
            f"fixed {rates.fixed:.3f}, sequential {rates.sequential:.3f}; familywise (Holm) "
            f"{rates.familywise:.3f}; {rates.arms} arms"
        )


if __name__ == "__main__":
    main()
