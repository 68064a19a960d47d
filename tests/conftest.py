"""Shared fixtures: MNIST 5k and small models trained once per test session.

Training a backdoored or clean `mnist_cnn` takes about 5 s on 2 cores; every test that
needs "a model with a planted backdoor" or "a clean model" uses these instead of training
its own, which keeps the suite inside its time budget.
"""

from __future__ import annotations

import pytest
import torch

from poisonguard import utils

utils.QUIET = True
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True, scope="session")
def _every_report_follows_the_schema():
    """Every report.json any test writes (CLI or library) is checked against the repository's JSON Schema."""
    import json

    from poisonguard.report import Report, validate_report

    write = Report.write

    def checked(self, out_dir):
        validate_report(json.loads(self.to_json()))
        return write(self, out_dir)

    Report.write = checked
    yield
    Report.write = write


@pytest.fixture(scope="session")
def mnist():
    from poisonguard.data import load_data

    return load_data("mnist5k")


@pytest.fixture(scope="session")
def badnets_trigger_3x3(mnist):
    from poisonguard.attacks import badnets_trigger

    return badnets_trigger(mnist.input_shape, target=0, size=3)


def _train(mnist, trigger, *, arch="mnist_cnn", seed=0, epochs=8):
    from poisonguard.attacks import poison_dataset
    from poisonguard.models import build_model
    from poisonguard.train import fit

    data = poison_dataset(mnist.train, trigger, rate=0.1, seed=seed).data if trigger is not None else mnist.train
    model = build_model(arch, num_classes=10, input_shape=mnist.input_shape, seed=seed)
    return fit(model, data, epochs=epochs, batch_size=64, seed=seed, device="cpu")


@pytest.fixture(scope="session")
def badnets_model(mnist, badnets_trigger_3x3):
    """mnist_cnn with a BadNets 3x3 white patch (bottom right), target 0, 10% poisoned."""
    return _train(mnist, badnets_trigger_3x3)


@pytest.fixture(scope="session")
def clean_model(mnist):
    """mnist_cnn trained on clean MNIST 5k with the same recipe."""
    return _train(mnist, None)


@pytest.fixture
def copy_model():
    """Deep-copy helper so a test can check a method left its input model unchanged."""
    import copy

    return copy.deepcopy


def _chromium():
    import shutil

    names = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "chrome", "headless_shell")
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture
def page_colours(tmp_path):
    """`page_colours(html)`: how many colours headless Chromium draws for the page (skips without Chromium).

    A report whose images and charts render shows hundreds; a blank or broken page a handful.
    """
    import subprocess

    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium installed for the screenshot test")

    def colours(html) -> int:
        from PIL import Image

        shot = tmp_path / "shot.png"
        subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                        "--window-size=1200,2000", html.resolve().as_uri()], check=True, timeout=120, capture_output=True)
        with Image.open(shot) as im:
            assert im.size == (1200, 2000)
            found = im.convert("RGB").getcolors(maxcolors=1 << 20)
        return 0 if found is None else len(found)

    return colours
