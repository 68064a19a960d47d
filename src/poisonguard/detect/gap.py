"""The smallest trigger's gap: how far a class's trigger is below every other class's, in log size.

After K-Arm's ratio test (Shen et al., "Backdoor Scanning for Deep Neural Networks through
K-Arm Optimization", ICML 2021), which flags a label whose trigger is several times smaller
than the others'. Unlike an index studentised by the spread of all classes' sizes, the gap
reads only the two smallest sizes, so an architecture whose large classes' sizes spread widely
(the stand-in case of issue 16) does not hide a target that is the smallest class by 4-7x.

Per class c the statistic is g_c = log(min over j != c of s_j) - log(s_c): positive only for
the smallest class, where it is log(second smallest / smallest).

The null is calibrated, not a fixed ratio. Spacings at the low end of a sample in the Gumbel
domain are close to exponential, and k times the k-th spacing has the same law as the first
(Weissman, JASA 1978), so a clean model's gap is taken as Exponential with mean m. The Gamma
prior on its rate 1/m counts as `n` clean models of mean gap `mean` (`PRIORS`, measured); two kinds of clean
evidence update it, a conjugate Gamma update: the calibration's reference models' gaps, and the
suspect's own 2nd-4th normalised spacings (`own_spacings`: an architecture whose low classes
spread widely widens its own null; a backdoor that shrinks one class leaves them alone). The
predictive law of a clean model's gap is then Lomax, P(g >= x) = (1 + x / (n m))^(-n), whose
tail is heavier than the exponential's the fewer observations stand behind m. Measured clean
gaps are lighter-tailed than exponential (benchmarks/results/issue-16.md, session 20).
"""

from __future__ import annotations

import math

import torch

# Neural Cleanse's mask L1 on clean models: the 30 clean user-written MNIST models (4
# architectures, seeds 4-12) of benchmarks/results/issue-16-image-architectures-s19*.json, mean
# gap 0.177 (largest 0.466, ratio 1.59). Counted as 10 models, not 30: four architectures of one
# data set, so a calibration's references move it. Other methods have no measured prior and get
# no gap test (DeepInspect's smallest class is often not the target; TABOR was not measured).
PRIORS = {"neural_cleanse": {"mean": 0.177, "n": 10}}
OWN_SPACINGS = 3  # the suspect's 2nd-4th spacings join its null: the low end, where the gap lies


def gap_index(sizes) -> torch.Tensor:
    """Per class: log(smallest other class's size) - log(this class's size)."""
    logs = torch.as_tensor(sizes, dtype=torch.float64).reshape(-1).clamp_min(1e-12).log()
    if len(logs) < 2:
        return torch.zeros_like(logs)
    order = torch.argsort(logs)
    others_min = torch.full_like(logs, float(logs[order[0]]))
    others_min[order[0]] = logs[order[1]]
    return others_min - logs


def own_spacings(sizes, count: int = OWN_SPACINGS) -> list[float]:
    """k x (the k-th spacing of the sorted log sizes), k = 2 .. count + 1: under the same law as a
    clean model's smallest gap (normalised spacings, Weissman 1978), and untouched by a backdoor
    that shrinks only the smallest class."""
    logs = torch.as_tensor(sizes, dtype=torch.float64).reshape(-1).clamp_min(1e-12).log().sort().values
    spacings = logs.diff()
    return [float(k * spacings[k - 1]) for k in range(2, min(count + 1, len(spacings)) + 1)]


def gap_null(method: str, reference_sizes=(), suspect_sizes=None) -> dict | None:
    """The Lomax law of a clean model's gap for `method` (None: no prior, no gap test): the prior
    updated with each reference's own smallest gap and with the suspect's own next spacings
    (`own_spacings`: a model whose low classes spread widely widens its own null)."""
    prior = PRIORS.get(method)
    if prior is None:
        return None
    seen = [float(gap_index(s).max()) for s in reference_sizes]
    if suspect_sizes is not None:
        seen += own_spacings(suspect_sizes)
    n = prior["n"] + len(seen)
    return {"mean": (prior["n"] * prior["mean"] + sum(seen)) / n, "n": n}


def gap_p_values(index: torch.Tensor, law: dict) -> list[float]:
    """P(a clean model's gap >= this class's gap), per class (1 for every class but the smallest)."""
    scale = law["n"] * law["mean"]
    return [float((1 + max(float(g), 0.0) / scale) ** -law["n"]) for g in index]


def gap_threshold(law: dict, level: float) -> float:
    """The gap a clean model exceeds with probability `level`."""
    return law["n"] * law["mean"] * (math.pow(level, -1 / law["n"]) - 1)
