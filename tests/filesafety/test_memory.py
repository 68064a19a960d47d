"""Issue 13: scanning the memory bombs stays far below 1.5 GB above the baseline after `import torch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BOMBS = ("deflate_bomb.pt", "npz_bomb.npz", "bytearray_bomb.pkl", "storage_call_bomb.pkl", "storage_claim.pt",
         "st_enormous.safetensors", "st_header_length.safetensors", "npy_shape_lie.npy", "onnx_huge_dims.onnx",
         "onnx_constant_of_shape_bomb.onnx", "onnx_expand_bomb.onnx", "onnx_abs_bomb.onnx")

_CHILD = r"""
import json, resource, sys
import torch
from poisonguard.filesafety import inspect_file
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
verdicts = [inspect_file(p).safe for p in sys.argv[1:]]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_kib": peak - base, "verdicts": verdicts}))
"""


def test_bombs_cost_little_memory(corpus):
    root, _ = corpus
    paths = [str(root / "hostile" / name) for name in BOMBS]
    src = str(Path(__file__).resolve().parents[2] / "src")
    run = subprocess.run([sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["verdicts"] == [False] * len(BOMBS)
    assert result["extra_kib"] < 1.5 * 1024 * 1024 / 10  # a tenth of the 1.5 GB bound
