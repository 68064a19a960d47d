"""Issue 18 figures: `poisonguard audit` over 100 small MNIST models on this machine.

Stages (each its own command, results kept in `--cache`/results.json so the stages can run
one at a time; `--stage all` runs them in order, `--stage print` prints the table):
  make        100 mnist_cnn models (half BadNets 3x3 target 0, half clean), each fine-tuned for
              one epoch on 500 images from one of two base models (cached in --cache/zoo)
  sequential  a plain loop over the same per-model work (file check + scan), one process
  ray1, ray2  `poisonguard audit --workers 1` / `--workers 2` (local Ray), fresh --out each
  cluster     a two-node local Ray cluster (`ray start --head` + `ray start --address`, both on
              127.0.0.1, one CPU each) run through `--address`; both nodes stopped afterwards
  resume      `--workers 2`, killed with SIGKILL (the whole process group) once half the models
              are done, then started again: every model must end done, none finished twice
  rerun       the finished ray2 audit started again: nothing left, no workers started
`--subset K` runs a stage over a manifest of the zoo's first K models instead of the folder
(used for `resume` and `cluster` when the shared machine is too loaded for 100 models each).
  calibrate   the scan verdict's calibration (4 clean references, the same for every model of
              the zoo: one architecture, one data set), computed once and cached before the
              timed stages, so they compare the per-model work; its own time is recorded apart
Per-model scan budget (all stages): `poisonguard scan`'s calibrated verdict with Neural Cleanse
alone, 3 inversion epochs over 2% of MNIST 5k's training part (80 images, 3 mini-batches of 32
per epoch), false-positive rate 0.05, seed 0. `--subset K` applies to every stage.

    PYTHONPATH=src python benchmarks/audit_benchmark.py --stage all [--models 100]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".cache" / "audit-bench"
BUDGET = ["--method", "neural-cleanse", "--epochs", "3", "--clean-fraction", "0.02", "--seed", "0"]
BUDGET_TEXT = ("calibrated verdict (4 clean references, cached), Neural Cleanse, 3 epochs over 2% of the "
               "training part (80 images), fpr 0.05, seed 0")
SETTINGS = dict(data="mnist5k", methods=("neural_cleanse",), epochs=3, clean_fraction=0.02, seed=0, device="cpu")


def _env(threads: int) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _results(cache: Path) -> dict:
    f = cache / "results.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _save(cache: Path, key: str, value: dict) -> None:
    res = _results(cache)
    res[key] = {**value, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "load_average": round(os.getloadavg()[0], 1)}
    (cache / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({key: res[key]}), flush=True)


# ---------------------------------------------------------------- the zoo

def make_zoo(cache: Path, n: int) -> Path:
    import copy

    import torch

    from poisonguard.attacks import badnets_trigger, poison_dataset
    from poisonguard.data import load_data
    from poisonguard.models import build_model, save_model
    from poisonguard.train import fit

    zoo = cache / "zoo"
    todo = [i for i in range(n) if not (zoo / _name(i) / "model.pt").exists()]
    if not todo:
        return zoo
    torch.set_num_threads(2)
    mnist = load_data("mnist5k")
    trigger = badnets_trigger(mnist.input_shape, target=0, size=3)
    poisoned = poison_dataset(mnist.train, trigger, rate=0.1, seed=0).data
    bases = {}
    for kind, data in (("clean", mnist.train), ("backdoor", poisoned)):
        base = build_model("mnist_cnn", num_classes=10, input_shape=mnist.input_shape, seed=0)
        bases[kind] = (fit(base, data, epochs=6, batch_size=64, seed=0, device="cpu"), data)
    classes = [str(c) for c in mnist.classes]
    for i in todo:
        kind = "backdoor" if i % 2 else "clean"
        base, data = bases[kind]
        g = torch.Generator().manual_seed(i)
        idx = torch.randperm(len(data), generator=g)[:500]
        subset = data.subset(idx)
        model = fit(copy.deepcopy(base), subset, epochs=1, batch_size=64, seed=i, device="cpu")
        save_model(model, zoo / _name(i) / "model.pt", arch="mnist_cnn", classes=classes, input_shape=mnist.input_shape,
                   training={"kind": kind, "base_epochs": 6, "finetune": "1 epoch on 500 images", "seed": i})
    return zoo


def _name(i: int) -> str:
    return f"m{i:03d}_{'backdoor' if i % 2 else 'clean'}"


# ---------------------------------------------------------------- runs

def _audit_cmd(zoo: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "poisonguard", "audit", str(zoo), "--data", "mnist5k", "--out", str(out),
            "--device", "cpu", "--quiet", *BUDGET, *extra]


def run_cli(zoo: Path, out: Path, *extra: str, threads: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(_audit_cmd(zoo, out, *extra), env=_env(threads), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1, 3):
        raise SystemExit(f"audit failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "exit": proc.returncode, "counts": summary["counts"],
            "resumed": summary["resumed"], "scanned": summary["scanned"], "models": summary["models"],
            "models_per_min": round(60 * summary["scanned"] / seconds, 1) if summary["scanned"] else None}


def sequential_child(zoo: Path) -> None:
    """The plain loop: discover, then file check + scan for each model, in this one process."""
    import torch

    from poisonguard import utils
    from poisonguard.audit import AuditSettings, discover
    from poisonguard.audit.worker import audit_one

    utils.QUIET = True
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    settings = AuditSettings(**SETTINGS)
    counts: dict[str, int] = {}
    for item in discover(zoo):
        r = audit_one(item, settings)
        kind = r["status"] if r["status"] != "done" else ("backdoored" if r["verdict"]["backdoored"] else "clean")
        counts[kind] = counts.get(kind, 0) + 1
    print(json.dumps(counts))


def run_sequential(zoo: Path, threads: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--stage", "sequential-child", "--zoo", str(zoo)],
                          env=_env(threads), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    n = sum(counts.values())
    return {"seconds": round(seconds, 1), "counts": counts, "scanned": n, "models_per_min": round(60 * n / seconds, 1)}


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def run_cluster(zoo: Path, out: Path, port: int = 6391) -> dict:
    """Head and a second node on 127.0.0.1 (one CPU each, blocking processes we own), then --address."""
    temp = Path("/tmp/pg-audit-cluster")
    env = _env(1)
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--block", "--disable-usage-stats"]
    head = subprocess.Popen([_ray_bin(), "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             "--temp-dir", str(temp), *common], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = [head]
    try:
        _wait_port(port, 90)
        second = subprocess.Popen([_ray_bin(), "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nodes.append(second)
        alive = _wait_nodes(f"127.0.0.1:{port}", 2, 90)
        result = run_cli(zoo, out, "--address", f"127.0.0.1:{port}", "--workers", "2", threads=1)
        return {**result, "nodes_alive": alive}
    finally:
        for proc in reversed(nodes):  # each node's whole process group: only what we started
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in nodes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(2)
        for proc in nodes:
            _kill_session(proc.pid)


def _wait_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the Ray head did not open port {port} in {timeout} s")


def _wait_nodes(address: str, n: int, timeout: float) -> int:
    code = (f"import ray,time\nray.init(address='{address}', log_to_driver=False)\n"
            f"t=time.time()\nwhile len([x for x in ray.nodes() if x['Alive']])<{n} and time.time()-t<{timeout}: time.sleep(0.5)\n"
            "print(len([x for x in ray.nodes() if x['Alive']]))")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(1), capture_output=True, text=True, timeout=timeout + 60)
    alive = int(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else 0
    if alive < n:
        raise SystemExit(f"only {alive} of {n} Ray nodes came up: {proc.stderr[-1000:]}")
    return alive


def _kill_session(sid: int) -> int:
    """SIGKILL every process left in session `sid` (a session this script started); returns how many."""
    proc = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True)
    left = [int(p) for p, s in (line.split() for line in proc.stdout.splitlines()) if int(s) == sid and int(p) != os.getpid()]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def _db_counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return dict(con.execute("SELECT status, COUNT(*) FROM results GROUP BY status").fetchall())
    except sqlite3.OperationalError:
        return {}


def run_resume(zoo: Path, out: Path, n: int) -> dict:
    db = out / "audit.db"
    start = time.perf_counter()
    child = subprocess.Popen(_audit_cmd(zoo, out, "--workers", "2"), env=_env(1), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while sum(v for k, v in _db_counts(db).items() if k != "running") < n // 2 and child.poll() is None:
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)  # the driver and its Ray processes, all at once, no clean-up
    child.wait()
    first = time.perf_counter() - start
    time.sleep(1)
    leftovers = _kill_session(child.pid)
    with sqlite3.connect(db) as con:
        done_at_kill = {p for (p,) in con.execute("SELECT path FROM results WHERE status != 'running'")}
        running_at_kill = con.execute("SELECT COUNT(*) FROM results WHERE status = 'running'").fetchone()[0]
    second = run_cli(zoo, out, "--workers", "2", threads=1)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT path, status, attempts FROM results").fetchall()
    twice_finished = [p for p, _, a in rows if p in done_at_kill and a > 1]
    return {"killed_after_s": round(first, 1), "done_at_kill": len(done_at_kill), "running_at_kill": running_at_kill,
            "processes_left_after_kill": leftovers, "rerun": second,
            "rows": len(rows), "all_finished": all(s in ("done", "unsafe") for _, s, _ in rows),
            "attempts_1": sum(a == 1 for _, _, a in rows), "attempts_2": sum(a == 2 for _, _, a in rows),
            "finished_models_scanned_again": len(twice_finished),
            "rerun_resumed_equals_done_at_kill": second["resumed"] == len(done_at_kill)}


# ---------------------------------------------------------------- table

def print_table(cache: Path) -> None:
    r = _results(cache)

    def mpm(key):
        return r.get(key, {}).get("models_per_min")

    print(f"per-model scan budget: {BUDGET_TEXT}")
    if "calibrate" in r:
        print(f"calibration + first model: {r['calibrate']['seconds']:7.1f} s (once per architecture and data)")
    if "sequential" in r and "ray1" in r:
        overhead = (r["ray1"]["seconds"] - r["sequential"]["seconds"]) / r["sequential"]["seconds"]
        print(f"sequential loop  : {r['sequential']['seconds']:7.1f} s  {mpm('sequential')} models/min")
        print(f"ray, 1 worker    : {r['ray1']['seconds']:7.1f} s  {mpm('ray1')} models/min  "
              f"overhead vs loop {100 * overhead:+.1f}% (goal <= +10%)")
    if "ray2" in r:
        print(f"ray, 2 workers   : {r['ray2']['seconds']:7.1f} s  {mpm('ray2')} models/min  counts {r['ray2']['counts']}")
    if "cluster" in r:
        print(f"2-node cluster   : {r['cluster']['seconds']:7.1f} s  {mpm('cluster')} models/min  "
              f"(nodes alive {r['cluster']['nodes_alive']}, {r['cluster'].get('models_in_run', 100)} models, "
              f"counts {r['cluster']['counts']})")
    if "resume" in r:
        s = r["resume"]
        print(f"resume ({s.get('models_in_run', 100)} models): killed at {s['done_at_kill']} done + {s['running_at_kill']} running; rerun resumed "
              f"{s['rerun']['resumed']}, scanned {s['rerun']['scanned']}; all finished {s['all_finished']}; "
              f"finished models scanned again {s['finished_models_scanned_again']}; attempts=1: {s['attempts_1']}, "
              f"=2: {s['attempts_2']}")
    if "rerun" in r and "ray2" in r:
        share = r["rerun"]["seconds"] / r["ray2"]["seconds"]
        print(f"rerun finished   : {r['rerun']['seconds']:7.1f} s = {100 * share:.1f}% of the ray2 audit (goal < 5%), "
              f"scanned {r['rerun']['scanned']}, resumed {r['rerun']['resumed']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", choices=["all", "make", "calibrate", "sequential", "ray1", "ray2", "cluster", "resume",
                                                        "rerun", "print", "sequential-child"])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--subset", type=int, default=None, help="audit a manifest of the first K models (resume, cluster)")
    args = ap.parse_args()
    if args.stage == "sequential-child":
        return sequential_child(args.zoo)
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    zoo = make_zoo(cache, args.models) if args.stage != "print" else cache / "zoo"
    # Every stage (and its Ray workers) shares one calibration cache, kept with the results.
    os.environ["POISONGUARD_CACHE"] = str(cache / "poisonguard-cache")
    stages = ["calibrate", "sequential", "ray1", "ray2", "cluster", "resume", "rerun"] if args.stage == "all" else [args.stage]
    target, n = zoo, args.models
    if args.subset:
        n = min(args.subset, args.models)
        target = cache / f"subset-{n}.jsonl"
        target.write_text("".join(json.dumps({"path": f"zoo/{_name(i)}/model.pt"}) + "\n" for i in range(n)))
    cores = os.cpu_count() or 1
    for stage in stages:
        if stage == "calibrate":
            one = cache / "first-model.jsonl"
            one.write_text(json.dumps({"path": f"zoo/{_name(0)}/model.pt"}) + "\n")
            _save(cache, stage, run_sequential(one, threads=cores))
        elif stage == "sequential":
            _save(cache, stage, {**run_sequential(target, threads=cores), "models_in_run": n})
        elif stage in ("ray1", "ray2"):
            workers = int(stage[-1])
            out = cache / f"out-{stage}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            _save(cache, stage, {**run_cli(target, out, "--workers", str(workers), threads=max(1, cores // workers)),
                                 "workers": workers, "models_in_run": n})
        elif stage == "cluster":
            out = cache / "out-cluster"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            _save(cache, stage, {**run_cluster(target, out), "models_in_run": n})
        elif stage == "resume":
            out = cache / "out-resume"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            _save(cache, stage, {**run_resume(target, out, n), "models_in_run": n})
        elif stage == "rerun":
            _save(cache, stage, run_cli(target, cache / "out-ray2", "--workers", "2", threads=1))
    print_table(cache)


if __name__ == "__main__":
    main()
