"""Input statistics for a federated model that scales its own inputs (the tables' `mlp`).

No client hands over rows, so the global model's standardisation cannot be fitted on the
training data. Instead each client reports, for every feature, its own median and robust
scale (interquartile range / 1.349, the normal's), and the server sets the global model's
statistics to the coordinate-wise median of those reports. A median of reports, as the
robust aggregators do for updates (Yin et al., 2018), so a minority of malicious clients
reporting anything at all cannot move the scaling outside the honest clients' range.
Two numbers per feature and client leave far less than a model update does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from poisonguard.train import unfitted_scalers

IQR_TO_SIGMA = 1.349
METHOD = "coordinate-wise median of every client's per-feature median and interquartile range / 1.349"


def client_report(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(median, scale), each (F,), of one client's rows x (N, F)."""
    x = x.double().reshape(len(x), -1)
    low, centre, high = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)
    return centre, (high - low) / IQR_TO_SIGMA


def fit_federated_input_stats(model: nn.Module, client_inputs: list[torch.Tensor]) -> dict[str, Any] | None:
    """Set `model`'s unfitted input scalers from the clients' reports; what was done, or None."""
    scalers = unfitted_scalers(model)
    if not scalers or not client_inputs:
        return None
    reports = [client_report(x) for x in client_inputs]
    centre = torch.stack([c for c, _ in reports]).median(0).values
    scale = torch.stack([s for _, s in reports]).median(0).values
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a feature constant at most clients
    for scaler in scalers:
        scaler.set_statistics(centre, scale)
    return {"method": METHOD, "clients": len(client_inputs), "features": int(centre.numel())}
