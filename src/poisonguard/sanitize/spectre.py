"""SPECTRE (Hayase, Kong, Somani & Oh, "SPECTRE: Defending Against Backdoor Attacks Using
Robust Statistics", ICML 2021).

Per class: reduce the penultimate representations to their top-k principal directions,
estimate the clean mean and covariance robustly (filtering out the samples farthest along
the top eigenvector, round by round, `robust_mean_cov`), whiten every sample with that estimate, and score with
QUantum Entropy (QUE): tau_i = y_i^T Q y_i / tr(Q), Q = exp(alpha (S - I) / (||S||_2 - 1)),
S the covariance of the whitened class. After whitening, clean samples look isotropic, so
any direction with excess variance is the poison's; QUE weighs all such directions (alpha -> 0
is the plain whitened norm, alpha -> inf the top direction alone).
"""

from __future__ import annotations

import numpy as np

from poisonguard.sanitize.base import SANITIZERS, Method, ScoringInputs, check_number, class_indices, top_components


def robust_mean_cov(x: np.ndarray, *, remove: float, steps: int, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) after filtering out a `remove` share of the rows.

    The filter of the robust-statistics literature SPECTRE builds on (Diakonikolas et al.):
    in each of `steps` rounds, drop the rows farthest out along the top eigenvector of the
    current covariance, the direction any cluster of outliers inflates. Unlike trimming by
    Mahalanobis distance, a tight poison cluster cannot hide inside an ellipsoid it inflated.
    """
    n, d = x.shape
    kept = np.arange(n)
    total = min(int(np.ceil(remove * n)), n - d - 1, n // 2)
    per_step = int(np.ceil(total / steps)) if total > 0 else 0
    while per_step and n - len(kept) < total:
        cov = np.cov(x[kept], rowvar=False).reshape(d, d)
        _, evecs = np.linalg.eigh(cov)
        proj = x[kept] @ evecs[:, -1]
        out = (proj - np.median(proj)) ** 2
        drop = min(per_step, total - (n - len(kept)))
        kept = kept[np.argsort(out)[: len(kept) - drop]]
    mean, cov = x[kept].mean(0), np.cov(x[kept], rowvar=False).reshape(d, d)
    return mean, cov + ridge * np.trace(cov) / d * np.eye(d)


def que_scores(y: np.ndarray, alpha: float) -> np.ndarray:
    """QUE scores (n,) of whitened rows y (n, d)."""
    s = np.cov(y, rowvar=False).reshape(y.shape[1], y.shape[1])
    evals, evecs = np.linalg.eigh(s)
    top = float(evals[-1])
    scale = alpha / max(top - 1.0, 1e-6)
    # Q = exp(scale * (S - I)); subtract the top exponent before exp so large alphas stay finite.
    w = np.exp(scale * (evals - top))
    q = (evecs * w) @ evecs.T
    return np.einsum("ij,jk,ik->i", y, q, y) / float(w.sum())


@SANITIZERS.register("spectre")
class Spectre(Method):
    """Scores (N,): QUE scores of robustly whitened top-k representations, per class."""

    name = "spectre"
    paper = "Hayase et al., ICML 2021"

    def __init__(self, *, dims: int = 32, alpha: float = 4.0, epsilon: float = 0.1, steps: int = 10) -> None:
        check_number("dims", dims, low=1, integer=True)
        check_number("alpha", alpha, low=0, open_low=True)
        check_number("epsilon", epsilon, low=0, high=0.5, open_low=True)
        check_number("steps", steps, low=1, integer=True)
        self.dims, self.alpha, self.epsilon, self.steps = int(dims), float(alpha), float(epsilon), int(steps)

    def score(self, inputs: ScoringInputs) -> np.ndarray:
        feats, labels = inputs.features.astype(np.float64), inputs.data.y.numpy()
        scores = np.zeros(len(labels))
        for _, idx in class_indices(labels).items():
            # Fewer samples than dimensions leave the covariance singular: shrink k.
            k = min(self.dims, max(1, len(idx) // 4))
            if len(idx) < 4:
                continue
            z = top_components(feats[idx], k)
            # The paper filters out 1.5 x epsilon, its margin over the suspected poison share.
            mean, cov = robust_mean_cov(z, remove=min(0.5, 1.5 * self.epsilon), steps=self.steps)
            evals, evecs = np.linalg.eigh(cov)
            whiten = evecs / np.sqrt(np.maximum(evals, 1e-12))
            scores[idx] = que_scores((z - mean) @ whiten, self.alpha)
        return scores

    def paper_flags(self, scores, labels, expected_rate):
        from poisonguard.sanitize.spectral import removal_rule

        return removal_rule(scores, labels, expected_rate)  # SPECTRE also removes 1.5 x epsilon per class
