"""Spectral signatures (Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018).

Per class, centre the penultimate representations and project them on their top right
singular vector; the squared projection is the outlier score. Poisoned samples shift the
class's mean along one direction, so they dominate that direction's variance. The paper's
rule removes the 1.5 x epsilon highest-scoring samples of every class whatever the data
(`removal_rule()` below); our default instead calibrates the score (`calibrate.py`), so a
clean data set is called clean.
"""

from __future__ import annotations

import numpy as np

from poisonguard.sanitize.base import SANITIZERS, Method, ScoringInputs, check_number, class_indices


@SANITIZERS.register("spectral")
class SpectralSignatures(Method):
    """Scores (N,): squared projection on each class's top singular vector of centred features."""

    name = "spectral"
    paper = "Tran, Li & Madry, NeurIPS 2018"

    def __init__(self, *, top_k: int = 1) -> None:
        check_number("top_k", top_k, low=1, integer=True)
        self.top_k = int(top_k)

    def score(self, inputs: ScoringInputs) -> np.ndarray:
        feats, labels = inputs.features.astype(np.float64), inputs.data.y.numpy()
        scores = np.zeros(len(labels))
        for _, idx in class_indices(labels).items():
            if len(idx) < 2:
                continue
            r = feats[idx] - feats[idx].mean(0, keepdims=True)
            _, _, vt = np.linalg.svd(r, full_matrices=False)
            scores[idx] = ((r @ vt[: self.top_k].T) ** 2).sum(1)
        return scores

    def paper_flags(self, scores, labels, expected_rate):
        return removal_rule(scores, labels, expected_rate)


def removal_rule(scores: np.ndarray, labels: np.ndarray, epsilon: float) -> np.ndarray:
    """The paper's rule: positions of the 1.5 x epsilon highest scores of every class."""
    flagged = []
    for _, idx in class_indices(labels).items():
        n = int(np.floor(1.5 * epsilon * len(idx)))
        if n:
            flagged.append(idx[np.argsort(-scores[idx])[:n]])
    return np.sort(np.concatenate(flagged)) if flagged else np.zeros(0, np.int64)
