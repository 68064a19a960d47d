"""The calibration cache: computed once for parallel scans, and never carrying another suspect's words."""

from __future__ import annotations

import threading
import time

import torch

import poisonguard.detect.calibration as calibration
from poisonguard.data import ImageData


def _data(n=20):
    """The same images on every call (a calibration is keyed by its data's contents)."""
    return ImageData(torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 2, ("a", "b"))


def _counting_fit(calls):
    def fake(data, arch, settings, key, *, seed, device, source, models=None):
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


def test_a_tampered_cache_file_is_recomputed_not_trusted(tmp_path, monkeypatch):
    """The cache folder may be shared (POISONGUARD_CACHE on a network disk, Ray workers): a file
    whose reference count, methods or statistics were edited is another calibration, recomputed.
    10**7 references had made the simulated null ask for terabytes; a list of methods crashed."""
    import json

    monkeypatch.setenv("POISONGUARD_CACHE", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(calibration, "_train_and_fit", _counting_fit(calls))
    args = dict(architecture="mnist_cnn", source="s", methods=["neural_cleanse"], n_models=2, data_id="d")
    first = calibration.calibrate(_data(), **args)
    path = calibration.cache_path(first.key)
    original = json.loads(path.read_text())
    null = {"mu": 0.1, "s": 0.2, "n": 2, "reference": [0.0, 0.0], "scales": [1.0, 1.0], "null": "simulated"}
    good = {**original, "methods": {"neural_cleanse": null}}
    tampered = [{**original, "n_models": 10_000_000}, {**original, "methods": [1, 2]},
                {**good, "methods": {"neural_cleanse": {**null, "scales": [1.0] * 100_000}}},
                {**good, "methods": {"neural_cleanse": {**null, "mu": "nan"}}} | {"seconds": float("inf")},
                {**original, "settings": {**original["settings"], "n_models": 10_000_000}}, "[" * 50_000]
    for text in [*(json.dumps(t) for t in tampered)]:
        path.write_text(text)
        assert calibration.calibrate(_data(), **args).n_models == 2
    assert len(calls) == 1 + len(tampered)
    path.write_text(json.dumps(good))
    read = calibration.calibrate(_data(), **args)
    assert read.methods == good["methods"]  # an intact file is used
    assert len(calls) == 1 + len(tampered)
    # the report says a cached calibration's seconds are what it cost when computed, not now
    assert read.summary()["cached"] and not first.summary()["cached"]
    assert "cached" not in json.loads(path.read_text())  # written as before: older files stay readable


def test_the_same_file_name_with_other_contents_is_another_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONGUARD_CACHE", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(calibration, "_train_and_fit", _counting_fit(calls))
    args = dict(architecture="mnist_cnn", source="s", methods=["neural_cleanse"], n_models=2, data_id="clean.npz")
    data = _data()
    calibration.calibrate(data, **args)
    calibration.calibrate(ImageData(data.x.clone(), data.y.clone(), data.classes), **args)
    assert len(calls) == 1
    calibration.calibrate(ImageData(1 - data.x, data.y, data.classes), **args)
    assert len(calls) == 2
