"""Issue 17 speed: `poisonguard sanitize` of poisoned MNIST 5k with the default methods,
including the model it trains, as a user runs it (the CLI, a subprocess), wall and CPU time.

    PYTHONPATH=src python benchmarks/sanitize_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.05)
    args = parser.parse_args()
    from poisonguard.attacks import badnets_trigger, poison_dataset
    from poisonguard.data import load_data

    splits = load_data("mnist5k")
    p = poison_dataset(splits.train, badnets_trigger(splits.input_shape, target=0, size=3), rate=args.rate, seed=2)
    u8 = lambda t: np.clip(np.rint(t.numpy() * 255), 0, 255).astype(np.uint8)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "poisoned.npz"
        np.savez(data, x=u8(p.data.x), y=p.data.y.numpy(), x_test=u8(splits.test.x), y_test=splits.test.y.numpy())
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "poisonguard", "sanitize", str(data), "--out", str(Path(tmp) / "out"),
                               "--quiet", "--device", "cpu"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(proc.stdout.strip())
    print(f"sanitize MNIST 5k (4000 train, default methods, incl. training): exit {proc.returncode}, "
          f"wall {wall:.1f}s, CPU {cpu:.1f}s, {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
