"""The global model's input scaling in `fl` on tables: from the clients' robust reports."""

from __future__ import annotations

import numpy as np
import torch

from poisonguard.data import ImageData
from poisonguard.data.dataset import Splits
from poisonguard.federated.input_stats import fit_federated_input_stats
from poisonguard.federated.simulate import Simulator
from poisonguard.models import build_model


def _rows(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return torch.tensor(np.stack([rng.normal(50_000, 20_000, n), rng.normal(30, 7, n)], 1) + shift,
                        dtype=torch.float32)


def test_a_malicious_minority_cannot_move_the_scaling():
    honest = [_rows(200, s) for s in range(7)]
    liars = [_rows(200, 100 + s, shift=1e9) * 1e3 for s in range(3)]
    model = build_model("mlp", num_classes=2, input_shape=(2,), seed=0)
    info = fit_federated_input_stats(model, honest + liars)
    scaler = model[0][0]
    assert info["clients"] == 10
    assert abs(float(scaler.mean[0]) - 50_000) < 5_000 and abs(float(scaler.mean[1]) - 30) < 3
    assert 0.6 < float(scaler.std[0]) / 20_000 < 1.6 and 0.6 < float(scaler.std[1]) / 7 < 1.6


def test_fl_on_a_table_in_raw_units_learns_beyond_the_majority():
    def task(n, seed):
        x = _rows(n, seed)
        y = ((x[:, 0] - 50_000) / 20_000 + (x[:, 1] - 30) / 7 > 0.8).long()
        return ImageData(x, y, ("low", "high"), kind="tabular")

    splits = Splits("income", task(2000, 0), task(600, 1))
    result = Simulator(clients=10, rounds=5, seed=0, device="cpu").run(splits, "fedavg")
    majority = 1 - float(splits.test.y.float().mean())
    assert result.rounds[-1].clean_accuracy > majority + 0.1
    assert result.extra["input_statistics"]["clients"] == 10
