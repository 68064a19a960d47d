"""Issue 16: how often the smallest-trigger gap test (`detect/gap.py`) flags a clean model whose
class sizes spread like iid log-normals, against the level it is run at.

Four stand-in references spread as the MNIST stand-in's Neural Cleanse sizes do (sd 0.46 in log
size across classes); the suspect's classes spread with sd SIGMA. The test runs at the level a
default stand-in verdict gives it (the combined cut over three methods, divided by NC's three
tests). Printed: the flagged share over the level (at most 1 keeps the stated rate).

    PYTHONPATH=src python benchmarks/gap_null_rate.py
"""

from __future__ import annotations

import torch

from poisonguard.detect import gap
from poisonguard.detect.verdict import DEFAULT_METHODS, method_bars

DRAWS = 2000
REFERENCE_SD = 0.46


def flagged_share(sigma: float, level: float, gen: torch.Generator) -> float:
    hits = 0
    for _ in range(DRAWS):
        refs = (4 + REFERENCE_SD * torch.randn(4, 10, generator=gen, dtype=torch.float64)).exp().tolist()
        sizes = (4 + sigma * torch.randn(10, generator=gen, dtype=torch.float64)).exp()
        law = gap.gap_null("neural_cleanse", refs, sizes)
        hits += gap.gap_p_values(gap.gap_index(sizes), law)[int(sizes.argmin())] <= level
    return hits / DRAWS


def main() -> None:
    _, cut, bars = method_bars(list(DEFAULT_METHODS), 0.05)
    level = cut / (3 * bars[0])
    gen = torch.Generator().manual_seed(0)
    print(f"level {level:.5f} (fpr 0.05, {len(DEFAULT_METHODS)} methods, NC's 3 tests); {DRAWS} clean draws per row")
    print("| suspect's sd of log size | flagged share / level |")
    print("|---|---|")
    for sigma in (0.3, 0.46, 0.8, 1.2):
        print(f"| {sigma} | {flagged_share(sigma, level, gen) / level:.2f} |")


if __name__ == "__main__":
    main()
