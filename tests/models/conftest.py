"""Keep torch's structured trace logger quiet under pytest's log capture.

pytest's capture handler accepts DEBUG records, which makes torch.export format and log a
trace of every graph it builds (`torch.__trace`): the suite ran many times slower."""

import logging

import pytest


@pytest.fixture(autouse=True, scope="session")
def _quiet_torch_trace():
    names = ("torch.__trace", "torch", "torch.fx", "torch.export", "torch._export", "torch._dynamo")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
