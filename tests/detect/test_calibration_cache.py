"""The calibration cache: computed once for parallel scans, and never carrying another suspect's words."""

from __future__ import annotations

import threading
import time

import torch

import poisonguard.detect.calibration as calibration
from poisonguard.data import ImageData


def _data(n=20):
    return ImageData(torch.rand(n, 1, 8, 8), torch.arange(n) % 2, ("a", "b"))


def _counting_fit(calls):
    def fake(data, settings, key, *, seed, device, source, models=None):
        calls.append(source)
        time.sleep(0.3)  # long enough for the other scans to arrive while this one works
        return calibration.Calibration(key=key, architecture=settings["architecture"], source=source, n_models=2,
                                       clean_images=len(data), seconds=0.3, methods={}, settings=settings)
    return fake


def test_parallel_scans_compute_one_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONGUARD_CACHE", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(calibration, "_train_and_fit", _counting_fit(calls))
    data, results = _data(), []

    def scan(i):
        results.append(calibration.calibrate(data, architecture="mnist_cnn", source=f"suspect {i}",
                                             methods=["neural_cleanse"], n_models=2, data_id="d"))

    threads = [threading.Thread(target=scan, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3
    assert len({r.key for r in results}) == 1
    # Each scan's report says where its own references came from, cached or not.
    assert sorted(r.source for r in results) == ["suspect 0", "suspect 1", "suspect 2"]


def test_other_settings_are_another_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONGUARD_CACHE", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(calibration, "_train_and_fit", _counting_fit(calls))
    for n_models in (2, 3, 2):
        calibration.calibrate(_data(), architecture="mnist_cnn", source="s", methods=["neural_cleanse"],
                              n_models=n_models, data_id="d")
    assert len(calls) == 2
