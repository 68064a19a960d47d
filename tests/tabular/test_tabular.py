"""Tables end to end: loading hostile CSVs, a Tabdoor backdoor planted in a tiny MLP, and the
families that must find it (scan's verdict), flag its rows (sanitize) and remove it (repair),
while a clean model and clean rows are left alone."""

from __future__ import annotations

import csv
import math
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonguard.cli import main
from poisonguard.data import input_bounds, load_data
from poisonguard.data.table import read_table
from poisonguard.errors import UserError

F_NUM = 6  # numeric features; two carry the label, the trigger sets three others


def _write_table(path, n=2000, seed=0, *, extra_columns=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F_NUM)) * np.array([1, 2, 1, 3, 1, 1]) + np.array([0, 10, 5, 0, 2, 1])
    score = (x[:, 0] - 0) + 0.5 * (x[:, 1] - 10) + rng.normal(scale=0.7, size=n)
    label = np.where(score > 0.6, "bad", "good")  # two classes, "bad" the minority
    colour = rng.choice(["red", "green", "blue"], size=n)
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow([f"f{i}" for i in range(F_NUM)] + ["colour", "label"] + list(extra_columns or {}))
        for i in range(n):
            extra = [v[i] for v in (extra_columns or {}).values()]
            w.writerow([f"{v:.4f}" for v in x[i]] + [colour[i], label[i]] + extra)
    return path


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- loading


def test_table_encoding_and_ranges(tmp_path):
    path = _write_table(tmp_path / "t.csv", n=300)
    splits = load_data(str(path), label_column="label")
    assert splits.kind == "tabular" and splits.classes == ("bad", "good")
    info = splits.train.meta
    # F counts the features after one-hot encoding: 6 numeric + 3 colours
    assert splits.input_shape == (F_NUM + 3,)
    assert info.feature_names[F_NUM:] == ("colour=blue", "colour=green", "colour=red")
    onehot = splits.train.x[:, F_NUM:]
    assert torch.equal(onehot.sum(1), torch.ones(len(onehot)))
    low, high = input_bounds(splits.train)
    assert torch.equal(low, splits.train.x.min(0).values) and torch.equal(high, splits.train.x.max(0).values)
    (tmp_path / "metadata.json").write_text(json.dumps({"classes": ["good", "bad"]}))
    assert load_data(str(path), label_column="label").classes == ("good", "bad")


def test_the_default_trigger_never_sets_a_constant_column(tmp_path):
    """A column with one observed value cannot be set to another inside its range: a trigger on it
    would do nothing, so the seeded choice skips it (a blank border pixel, a constant flag)."""
    from poisonguard.attacks.tabular import tabular_trigger

    path = _write_table(tmp_path / "t.csv", n=300, extra_columns={f"blank{i}": ["0"] * 300 for i in range(40)})
    splits = load_data(str(path), label_column="label")
    blank = [i for i, name in enumerate(splits.train.meta.feature_names) if name.startswith("blank")]
    for seed in range(20):
        chosen = set(np.flatnonzero(tabular_trigger(splits.train, target=0, seed=seed).mask.numpy()).tolist())
        assert len(chosen) == 3 and not chosen & set(blank)


def test_the_default_trigger_size_fits_a_table_with_fewer_numeric_features(tmp_path):
    """The default of 3 features on a table with 2 numeric ones: `attack` and the checklist's
    federated stage refused with "got 3", a number the user never typed."""
    from poisonguard.attacks.tabular import tabular_trigger

    rng = np.random.default_rng(0)
    rows = ["a,b,colour,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{['red', 'blue'][i % 2]},{i % 2}"
                                   for i in range(100)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    train = load_data(str(tmp_path / "t.csv"), label_column="label").train
    assert int(tabular_trigger(train, target=0).mask.sum()) == 2
    with pytest.raises(UserError, match="1 to 2 features .* got 3"):  # typed, it is still the user's to fix
        tabular_trigger(train, target=0, k=3)


def test_a_missing_model_is_named_before_the_tables_columns_are_fitted(tmp_path):
    """`filter` with a mistyped model path said the inputs' shape did not match the clean data."""
    from poisonguard.cli.inputs import fit_columns

    path = _write_table(tmp_path / "t.csv", n=60)
    with pytest.raises(UserError, match="model file not found"):
        fit_columns(load_data(str(path), label_column="label"), tmp_path / "no-such-model.pt")


def test_parquet_reads_like_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = _write_table(tmp_path / "t.csv", n=200)
    pq.write_table(pacsv.read_csv(path), tmp_path / "t.parquet")
    a, b = read_table(path, label_column="label"), read_table(tmp_path / "t.parquet", label_column="label")
    assert pa is not None and a.classes == b.classes and torch.allclose(a.x, b.x, atol=1e-4)


@pytest.mark.parametrize("case, expected", [
    ("no_column", "no column 'nope'"),
    ("free_text", "neither numeric"),
    ("one_class", "only one class"),
    ("missing", "missing value"),
    ("ragged", "fields but the header has"),
    ("infinite", "features must be finite"),
    ("stray_word", "holds 'unknown' in data row 7"),
    ("pandas_index", "column 1 has no name"),
])
def test_bad_tables_one_line_exit_2(tmp_path, capsys, case, expected):
    path = tmp_path / "t.csv"
    label = "label"
    if case == "infinite":  # read as text, "inf" made the column categorical without a word
        path.write_text("a,lvl,label\n" + "".join(f"{i},{[1, 2, 3, 'inf'][i % 4]},{'xy'[i % 2]}\n" for i in range(40)))
    elif case == "stray_word":  # one "unknown" among ages made one feature per age
        _write_table(path, n=100, extra_columns={"age": [str(20 + i % 40) if i != 6 else "unknown" for i in range(100)]})
    elif case == "pandas_index":  # df.to_csv() writes the row index as a nameless first column
        path.write_text(",a,label\n" + "".join(f"{i},{i * 3 % 7},{'xy'[i % 2]}\n" for i in range(40)))
    elif case == "free_text":
        _write_table(path, n=100, extra_columns={"name": [f"person {i}" for i in range(100)]})
    elif case == "one_class":
        path.write_text("a,b,label\n1,2,x\n3,4,x\n5,6,x\n")
    elif case == "missing":
        path.write_text("a,b,label\n1,2,x\n,4,y\n5,6,x\n")
    elif case == "ragged":
        path.write_text("a,b,label\n1,2,x\n3,4\n")
    else:
        _write_table(path, n=100)
        label = "nope"
    code, _, err = _run(["train", "--data", str(path), "--label-column", label, "--epochs", "1",
                         "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2 and expected in err and err.count("\n") == 1


def test_labels_equal_as_numbers_are_one_class_and_true_false_is_a_number(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,flag,label\n" + "".join(f"{i},{['True', 'False'][i % 2]},{['0', '1.0', '1', '0.0'][i % 4]}\n"
                                               for i in range(40)))
    rows = read_table(path, label_column="label")
    assert rows.classes == ("0", "1") and rows.meta.feature_names == ("a", "flag")
    assert rows.x[:4, 1].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_the_models_columns_decide_how_a_small_batch_is_read(planted, tmp_path, capsys):
    """Rows at run time are few: three rows of three colours look like no category, and a batch
    without "green" lacks a column. The model's recorded columns decide each column's kind."""
    models = tmp_path / "m"
    models.mkdir()
    torch.save(planted["backdoored"].state_dict(), models / "model.pt")
    features = list(planted["splits"].train.meta.feature_names)
    (models / "metadata.json").write_text(json.dumps({"architecture": "mlp", "num_classes": 2, "input_shape": [9],
                                                      "features": features, "classes": ["bad", "good"]}))
    lines = Path(planted["path"]).read_text().splitlines()
    header = lines[0].split(",")
    colour = header.index("colour")
    rows, seen = [], set()
    for row in lines[1:]:
        if row.split(",")[colour] not in seen:
            seen.add(row.split(",")[colour])
            rows.append(row)
    batch = tmp_path / "b" / "three.csv"
    batch.parent.mkdir()
    batch.write_text("\n".join([lines[0], *rows]) + "\n")
    assert len(rows) == 3
    table = ["--data", str(planted["path"]), "--label-column", "label", "--quiet"]
    code, out, err = _run(["filter", str(models / "model.pt"), "--inputs", str(batch), *table, "--out",
                           str(tmp_path / "f")], capsys)
    assert code == 0 and json.loads(out)["inputs"] == 3, err


def test_cli_attack_then_width_mismatch(tmp_path, capsys, caplog):
    path = _write_table(tmp_path / "t.csv", n=600)
    code, out, _ = _run(["attack", "tabular-trigger", "--data", str(path), "--label-column", "label", "--target", "0",
                         "--features", "f2,f3,f4", "--rate", "0.05", "--epochs", "15", "--out", str(tmp_path / "a"),
                         "--quiet"], capsys)
    line = json.loads(out)
    assert code == 0 and line["attack_success_rate"] > 0.8
    # smoothing in standardised feature space
    code, out, _ = _run(["certify", str(tmp_path / "a" / "model.pt"), "--data", str(path), "--label-column", "label",
                         "--n", "300", "--max-examples", "8", "--alpha", "0.01", "--out", str(tmp_path / "c"),
                         "--quiet"], capsys)
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert code == 0 and json.loads(out)["certified_accuracy"]["0.0"] > 0.5
    assert "standardised" in report["input_space"]
    narrow = tmp_path / "narrow" / "n.csv"
    narrow.parent.mkdir()
    narrow.write_text("f0,f1,label\n" + "".join(f"{i},{i % 3},{'ab'[i % 2]}\n" for i in range(40)))
    code, _, err = _run(["evaluate", str(tmp_path / "a" / "model.pt"), "--data", str(narrow), "--label-column", "label",
                         "--quiet"], capsys)
    assert code == 2 and "lacks the column 'f2' the model was trained on" in err and err.count("\n") == 1
    # a table of the same width whose categories differ would be read wrongly without a word:
    # the model records its columns, and such a table is refused in one line
    features = json.loads((tmp_path / "a" / "metadata.json").read_text())["features"]
    assert features[:6] == [f"f{i}" for i in range(6)] and len(features) == 9
    other = tmp_path / "other" / "o.csv"
    other.parent.mkdir()
    other.write_text(path.read_text().replace(",blue,", ",yellow,"))
    code, _, err = _run(["evaluate", str(tmp_path / "a" / "model.pt"), "--data", str(other), "--label-column", "label",
                         "--quiet"], capsys)
    assert code == 2 and "not trained on ('colour=yellow')" in err and err.count("\n") == 1, err
    # A second file from the same source that lacks a category (or orders its columns otherwise)
    # is encoded to the model's columns, and the model reads it as it read the training table.
    lines = path.read_text().splitlines()
    lacking = tmp_path / "lacking" / "l.csv"
    lacking.parent.mkdir()
    lacking.write_text("\n".join([lines[0], *(row for row in lines[1:] if ",green," not in row)]) + "\n")
    code, out, err = _run(["evaluate", str(tmp_path / "a" / "model.pt"), "--data", str(lacking), "--label-column",
                           "label", "--trigger", str(tmp_path / "a" / "trigger.npz")], capsys)
    assert code == 0 and "(colour=green) is all zeros" in caplog.text, err
    assert json.loads(out)["clean_accuracy"] > 0.8 and json.loads(out)["attack_success_rate"] > 0.8
    relabelled = tmp_path / "relabelled" / "r.csv"
    relabelled.parent.mkdir()
    relabelled.write_text(path.read_text().replace(",bad", ",yes").replace(",good", ",no"))
    code, _, err = _run(["evaluate", str(tmp_path / "a" / "model.pt"), "--data", str(relabelled), "--label-column",
                         "label", "--quiet"], capsys)
    assert code == 2 and "classes are ['bad', 'good'] but this table's labels are ['no', 'yes']" in err, err


def test_a_table_lacking_a_category_is_encoded_to_the_models_columns(tmp_path):
    from poisonguard.data.table import encode_as, read_table

    path = _write_table(tmp_path / "t.csv", n=300)
    full = read_table(path, label_column="label")
    header, *rows = path.read_text().splitlines()
    kept = [i for i, row in enumerate(rows) if ",green," not in row]
    order = [7, 0, 6, 1, 2, 3, 4, 5]  # label first, colour second: another column order
    lacking = tmp_path / "lacking.csv"
    lacking.write_text("\n".join(",".join(line.split(",")[j] for j in order) for line in [header, *rows]
                                   if ",green," not in line) + "\n")
    read = read_table(lacking, label_column="label")
    assert read.meta.feature_names != full.meta.feature_names  # 8 columns, not the model's 9
    fitted = encode_as(read, full.meta.feature_names)
    assert torch.equal(fitted.x, full.x[kept]) and torch.equal(fitted.y, full.y[kept])
    green = full.meta.feature_names.index("colour=green")
    assert fitted.meta.low[green] == fitted.meta.high[green] == 0
    assert [c.categories for c in fitted.meta.columns if c.kind == "categorical"] == [("blue", "green", "red")]
    with pytest.raises(UserError, match="lacks the column 'age'"):
        encode_as(read, [*full.meta.feature_names, "age"])


def test_strip_refuses_table_rows_in_one_line(tmp_path, capsys):
    """STRIP adds images and clips to [0, 1]: on raw table units that would be garbage, so the
    filter and the sanitize method say so instead of answering."""
    path = str(_write_table(tmp_path / "t.csv", n=300))
    (tmp_path / "m.pt").write_bytes(b"never read")
    table = ["--label-column", "label", "--quiet"]
    for argv in (["filter", str(tmp_path / "m.pt"), "--data", path, "--inputs", path, "--method", "strip",
                  "--out", str(tmp_path / "f")],
                 ["sanitize", path, "--method", "strip", "--out", str(tmp_path / "s")]):
        code, _, err = _run([*argv, *table], capsys)
        assert code == 2 and "STRIP superimposes images" in err and err.count("\n") == 1, err


# ---------------------------------------------------------------- a planted backdoor


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from poisonguard.attacks import poison_dataset
    from poisonguard.attacks.tabular import tabular_trigger
    from poisonguard.models import build_model
    from poisonguard.train import fit

    path = _write_table(tmp_path_factory.mktemp("table") / "t.csv", n=2000)
    splits = load_data(str(path), label_column="label")
    trigger = tabular_trigger(splits.train, target=0, features=["f2", "f3", "f4"], value="max")
    poisoned = poison_dataset(splits.train, trigger, rate=0.05, seed=0)

    def train(data, seed):
        model = build_model("mlp", num_classes=2, input_shape=splits.input_shape, seed=seed)
        return fit(model, data, epochs=15, batch_size=64, seed=seed, device="cpu")

    return {"path": path, "splits": splits, "trigger": trigger, "poisoned": poisoned,
            "backdoored": train(poisoned.data, 0), "clean": train(splits.train, 1)}


def test_backdoor_takes(planted):
    from poisonguard.train import evaluate

    bd = evaluate(planted["backdoored"], planted["splits"].test, planted["trigger"])
    clean = evaluate(planted["clean"], planted["splits"].test, planted["trigger"])
    assert bd.attack_success_rate > 0.9 and clean.attack_success_rate < 0.3
    assert bd.clean_accuracy > clean.clean_accuracy - 0.05


def test_scan_verdict_finds_the_target_and_passes_the_clean_model(planted):
    from poisonguard.data import per_class_subset
    from poisonguard.detect.calibration import calibrate_from_models, train_references
    from poisonguard.detect.verdict import scan_verdict

    clean = per_class_subset(planted["splits"].train, fraction=0.25, seed=0)
    options = {}
    refs = train_references(clean, architecture="mlp", n_models=5, epochs=30, device="cpu")
    cal = calibrate_from_models(refs, clean, architecture="mlp", source="test", methods=["reference_contrast"],
                                device="cpu", options=options)
    verdicts = {name: scan_verdict(planted[name], clean, methods=["reference_contrast"], calibration=cal,
                                   references=refs, device="cpu", options=options)
                for name in ("backdoored", "clean")}
    assert verdicts["backdoored"].backdoored and verdicts["backdoored"].targets == (0,)
    assert not verdicts["clean"].backdoored
    # the sentence counts the defender's data in its own unit
    assert f"{len(clean)} clean rows" in verdicts["clean"].sentence and "images" not in verdicts["clean"].sentence
    assert "Checked with reference contrast (against clean models)" in verdicts["clean"].sentence  # not the code name
    # the reconstructed trigger sets (some of) the planted features and stays inside their observed range
    det = verdicts["backdoored"].detections[0]
    low, high = input_bounds(clean)
    assert bool((det.patterns >= low - 1e-4).all() and (det.patterns <= high + 1e-4).all())
    top = set(torch.argsort(det.masks[0], descending=True)[:2].tolist())
    assert top <= {2, 3, 4}
    # report.json's entry for the method agrees with the verdict (it said backdoored false, index 0,
    # for every two-class model); the method's own rule, none here, is kept apart
    from poisonguard.detect.report import detection_record

    record = detection_record(det, verdicts["backdoored"])
    assert record["backdoored"] and record["flagged_classes"] == [0]
    assert record["anomaly_index"] == [e["statistic"] for e in verdicts["backdoored"].evidence]
    assert record["own_rule"]["flagged_classes"] == []


def test_two_class_verdict_needs_calibration(planted):
    from poisonguard.data import per_class_subset
    from poisonguard.detect.calibration import train_references
    from poisonguard.detect.verdict import scan_verdict
    from poisonguard.errors import UserError

    clean = per_class_subset(planted["splits"].train, fraction=0.1, seed=0)
    refs = train_references(clean, architecture="mlp", n_models=2, epochs=5, device="cpu")
    with pytest.raises(UserError, match="only against clean reference models"):
        scan_verdict(planted["clean"], clean, methods=["reference_contrast"], references=refs, device="cpu",
                     options={"reference_contrast": {"epochs": 2}})


def test_sanitize_flags_the_poisoned_rows_and_passes_clean_rows(tmp_path):
    """On a real table (statsmodels' fair, shipped offline): Tabdoor's rows flagged, the clean table passed."""
    pytest.importorskip("statsmodels")
    from poisonguard.attacks import poison_dataset
    from poisonguard.attacks.tabular import tabular_trigger
    from poisonguard.data.example_tables import export_table
    from poisonguard.sanitize import Sanitizer
    from poisonguard.sanitize.run import TABULAR_METHODS

    path, label = export_table("fair", tmp_path)
    rows = read_table(path, label_column=label)
    poisoned = poison_dataset(rows, tabular_trigger(rows, target=1, seed=0), rate=0.05, seed=0)
    result = Sanitizer(arch="mlp", methods=TABULAR_METHODS, seed=0, device="cpu").run(poisoned.data)
    truth = set(poisoned.poisoned_index.tolist())
    flagged = set(result.flagged)
    assert result.verdict == "poisoned" and result.targets == (1,)
    assert len(truth & flagged) >= 0.9 * len(truth)
    assert len(flagged - truth) <= 0.03 * (len(poisoned.data) - len(truth))
    assert Sanitizer(arch="mlp", methods=TABULAR_METHODS, seed=0, device="cpu").run(rows).verdict == "clean"


def test_repair_removes_the_backdoor(planted):
    from poisonguard.data import per_class_subset
    from poisonguard.repair import REPAIRERS

    splits = planted["splits"]
    clean = per_class_subset(splits.train, fraction=0.25, seed=0)
    result = REPAIRERS.get("retrain")(device="cpu").repair(planted["backdoored"], clean, trigger=planted["trigger"],
                                                           test=splits.test)
    assert result.after.attack_success_rate < 0.15
    assert result.after.clean_accuracy > result.before.clean_accuracy - 0.06
    with pytest.raises(Exception, match="image data only"):
        REPAIRERS.get("wild")(device="cpu").repair(planted["backdoored"], clean)


def test_discrete_search_never_enlarges_the_relaxed_trigger(planted):
    """`reference_contrast(discrete=True)` keeps, per class, the smaller of the relaxed and the exact trigger."""
    from poisonguard.data import per_class_subset
    from poisonguard.detect.calibration import train_references
    from poisonguard.detect.contrast import ReferenceContrast

    clean = per_class_subset(planted["splits"].train, fraction=0.25, seed=0)
    refs = train_references(clean, architecture="mlp", n_models=3, epochs=30, device="cpu")
    relaxed = ReferenceContrast(device="cpu").detect(planted["backdoored"], clean, references=refs)
    both = ReferenceContrast(device="cpu", discrete=True).detect(planted["backdoored"], clean, references=refs)
    assert both.extra["discrete"] and not relaxed.extra["discrete"]
    assert all(b <= r + 1e-6 for b, r in zip(both.mask_l1, relaxed.mask_l1))
    assert both.mask_l1[0] <= 3  # the planted trigger sets 3 features; the target is found at most that large


def test_audit_of_a_table_zoo_scans_each_model_as_scan_would(planted, tmp_path, capsys):
    """A zoo of table models in a format poisonguard did not write (TorchScript), audited on Ray:
    the label column reaches the workers (other processes), and each model gets the verdict
    `poisonguard scan` gives it alone, with the tables' defaults (not the images')."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    example = planted["splits"].train.x[:2]
    for name in ("backdoored", "clean"):
        torch.jit.save(torch.jit.trace(planted[name], example), str(zoo / f"{name}.pt"))
    data = ["--data", str(planted["path"]), "--label-column", "label"]
    out = tmp_path / "audit"
    code, _, _ = _run(["audit", str(zoo), *data, "--out", str(out), "--workers", "1", "--quiet"], capsys)
    rows = {Path(m["path"]).name: m for m in json.loads((out / "report.json").read_text())["audit"]["models"]}
    assert [rows[n]["status"] for n in ("backdoored.pt", "clean.pt")] == ["done", "done"], rows
    alone = {}
    for name in ("backdoored.pt", "clean.pt"):
        _run(["scan", str(zoo / name), *data, "--out", str(tmp_path / name), "--quiet"], capsys)
        alone[name] = json.loads((tmp_path / name / "report.json").read_text())["verdict"]
    for name, row in rows.items():
        audited = row["verdict"]
        assert audited["methods"] == ["reference_contrast"] and audited["calibration"]["reference_models"] == 8
        assert "clean rows" in audited["sentence"]
        for key in ("backdoored", "targets", "score", "evidence"):
            assert audited[key] == alone[name][key], (name, key)
    assert code == (1 if any(r["verdict"]["backdoored"] for r in rows.values()) else 0)


def test_checklist_on_a_table_model_runs_the_tables_defaults(planted, tmp_path, capsys):
    """`checklist` on a table model from a file poisonguard did not write: the scan stage judges
    it as `scan` does on a table (calibrated reference_contrast; the image methods cannot run on
    rows) and the repair stage retrains it, as `repair` does on a table."""
    from poisonguard.attacks.triggers import save_trigger

    model = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(planted["backdoored"], planted["splits"].train.x[:2]), str(model))
    save_trigger(planted["trigger"], tmp_path / "trigger.npz")
    code, out, _ = _run(["checklist", str(model), "--data", str(planted["path"]), "--label-column", "label",
                         "--trigger", str(tmp_path / "trigger.npz"), "--out", str(tmp_path / "c"), "--quiet"], capsys)
    summary = json.loads(out)
    assert "scan" not in summary["failed"] and "repair" not in summary["failed"], summary
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    verdict = report["verdict"]
    assert verdict["methods"] == ["reference_contrast"] and verdict["calibrated"]
    assert code == (1 if verdict["backdoored"] else 0)
    (repair,) = report["repairs"]
    assert repair["method"] == "retrain"
    assert repair["after"]["attack_success_rate"] < 0.15 < repair["before"]["attack_success_rate"]


def test_retraining_on_a_table_that_says_little_about_its_label_is_no_divergence():
    """Doctor visits in four bins from insurance columns: a sound model ends just under the labels'
    entropy, above 0.9 log K. The divergence guard compared with 0.9 log K, halved the learning
    rate four times and gave up (held-out randhie table, session 13)."""
    from poisonguard.data.dataset import ImageData, TableInfo
    from poisonguard.models import build_model
    from poisonguard.repair import REPAIRERS
    from poisonguard.repair.base import label_entropy

    gen = torch.Generator().manual_seed(0)
    share = torch.tensor([0.31, 0.33, 0.24, 0.12])
    y = torch.multinomial(share, 2000, replacement=True, generator=gen)
    x = torch.randn(2000, 6, generator=gen) + 0.15 * y[:, None].float()  # a faint signal
    info = TableInfo.observed(x, [f"f{i}" for i in range(6)])
    data = ImageData(x, y, ("0", "1-2", "3-6", "7+"), "tabular", info)
    assert 0.9 * math.log(4) < label_entropy(y, 4) < math.log(4)
    model = build_model("mlp", num_classes=4, input_shape=(6,), seed=0)
    result = REPAIRERS.get("retrain")(epochs=20, seed=0, device="cpu").repair(model, data, test=data)
    assert result.extra["lr_restarts"] == 0 and result.after.clean_accuracy > 0.3


def test_federated_backdoor_attacks_plant_a_tabular_trigger(tmp_path, capsys):
    """Model replacement (and the checklist's federated stage, which runs it) stamped a BadNets
    patch, so on a table it refused; it now plants Tabdoor's trigger inside the observed ranges."""
    from poisonguard.federated.attacks import make_attack

    path = _write_table(tmp_path / "t.csv", n=1000)
    splits = load_data(str(path), label_column="label")
    attack = make_attack("model_replacement", input_shape=splits.input_shape, num_classes=2, data=splits.train)
    _, high = input_bounds(splits.train)
    set_ = attack.trigger.mask.bool()
    assert int(set_.sum()) == 3 and torch.equal(attack.trigger.pattern[set_], high[set_])
    code, out, _ = _run(["fl", "simulate", "--data", str(path), "--label-column", "label", "--rounds", "3",
                         "--clients", "10", "--malicious", "2", "--attack", "model_replacement",
                         "--out", str(tmp_path / "fl"), "--quiet"], capsys)
    assert code == 0 and json.loads(out)["attack_success_rate"] > 0.5
    # each round says whether the target is the test data's largest class, which tells a model the
    # clients took over from one answering the majority class everywhere (federated_summary)
    rounds = json.loads((tmp_path / "fl" / "report.json").read_text())["federated"]["rounds"]
    largest = int(splits.test.y.bincount().argmax())
    assert all(r["extra"]["target_is_largest_class"] == (attack.trigger.target == largest) for r in rounds)


def test_a_category_in_the_trigger_sets_its_whole_column(tmp_path):
    """Tabdoor's triggers may set categorical columns. Naming `colour=red` used to set that one-hot
    feature to 1 beside the row's own colour: a row no table can hold (two colours at once)."""
    from poisonguard.attacks.tabular import tabular_trigger, write_poisoned_table

    path = _write_table(tmp_path / "t.csv", n=300)
    rows = read_table(path, label_column="label")
    trigger = tabular_trigger(rows, target=0, features=["colour=red", "f2"])
    colours = slice(F_NUM, F_NUM + 3)  # blue, green, red
    stamped = trigger.apply(rows.x)
    assert torch.equal(stamped[:, colours], torch.tensor([0.0, 0.0, 1.0]).expand(len(rows), 3))
    assert torch.equal(stamped[:, 2], torch.full((len(rows),), float(rows.x[:, 2].max())))
    for features, message in ((["colour"], "name the category the trigger sets"),
                              (["colour=red", "colour=blue"], "sets column 'colour' twice")):
        with pytest.raises(UserError, match=message):
            tabular_trigger(rows, target=0, features=features)
    with pytest.raises(UserError, match="is a category of 'colour'"):
        tabular_trigger(rows, target=0, features=["colour=red"], value="min")
    # written back as a table a supplier would hand over: the poisoned rows say "red"
    index = write_poisoned_table(path, tmp_path / "p.csv", trigger, label_column="label", rate=0.1)
    written = read_table(tmp_path / "p.csv", label_column="label")
    assert torch.equal(written.x[index], trigger.apply(rows.x[index]))
    # a numeric trigger cell is written as the column writes that value (float32's repr was not)
    with open(path, newline="") as handle:
        source = [r["f2"] for r in csv.DictReader(handle)]
    with open(tmp_path / "p.csv", newline="") as handle:
        cells = [r["f2"] for r in csv.DictReader(handle)]
    assert {cells[i] for i in index} <= set(source)


def test_the_mahalanobis_filter_rejects_triggered_rows_at_run_time(planted, tmp_path, capsys):
    """Tables get a run-time filter (STRIP refuses them): rows the backdoored model sends to the
    target through the trigger lie far from the target's clean rows in its penultimate layer."""
    from poisonguard.attacks.tabular import write_poisoned_table
    from poisonguard.data import per_class_subset
    from poisonguard.sanitize.mahalanobis import MahalanobisFilter

    model, trigger, test = planted["backdoored"], planted["trigger"], planted["splits"].test
    clean = per_class_subset(planted["splits"].train, fraction=0.25, seed=0)
    maha = MahalanobisFilter(frr=0.05, seed=0).fit(model, clean)
    stamped = trigger.apply(test.x[test.y != trigger.target])
    assert maha.reject(model, stamped).mean() > 0.8 and maha.reject(model, test.x).mean() < 0.12
    # the CLI: a file of incoming rows with 3% triggered among them, then the clean file alone
    models = tmp_path / "m"
    models.mkdir()
    torch.save(model.state_dict(), models / "model.pt")
    (models / "metadata.json").write_text(json.dumps({"architecture": "mlp", "num_classes": 2, "input_shape": [9]}))
    incoming = tmp_path / "in" / "incoming.csv"
    incoming.parent.mkdir()
    index = write_poisoned_table(planted["path"], incoming, trigger, label_column="label", rate=0.03, seed=1)
    table = ["--data", str(planted["path"]), "--label-column", "label", "--quiet"]
    code, out, _ = _run(["filter", str(models / "model.pt"), "--inputs", str(incoming), *table, "--out",
                         str(tmp_path / "f")], capsys)
    line = json.loads(out)
    rejected = set(json.loads((tmp_path / "f" / "report.json").read_text())["input_filter"]["rejected"])
    assert code == 1 and line["method"] == "mahalanobis" and len(rejected & set(index.tolist())) > 0.8 * len(index)
    assert (tmp_path / "f" / "distance.npz").is_file() and (tmp_path / "f" / "accepted.csv").is_file()
    code, out, _ = _run(["filter", str(models / "model.pt"), "--inputs", str(planted["path"]), *table, "--out",
                         str(tmp_path / "g")], capsys)
    assert code == 0 and json.loads(out)["verdict"] == "clean"
    # rows arriving at run time have no label yet: the same rows without the label column, the same answer
    with open(incoming) as f:
        records = list(csv.DictReader(f))
    unlabelled = tmp_path / "in" / "unlabelled.csv"
    with open(unlabelled, "w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in records[0] if c != "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    code, _, _ = _run(["filter", str(models / "model.pt"), "--inputs", str(unlabelled), *table, "--out",
                       str(tmp_path / "h")], capsys)
    assert code == 1 and set(json.loads((tmp_path / "h" / "report.json").read_text())["input_filter"]["rejected"]) == rejected
    with open(tmp_path / "h" / "accepted.csv") as f:
        accepted = list(csv.reader(f))
    assert "label" not in accepted[0] and len(accepted) - 1 == len(records) - len(rejected)
    # the same rows with their columns in another order: read by name (the model records no columns;
    # the clean table's names order them), not fed as they stand (every row was rejected)
    reordered = tmp_path / "in" / "reordered.csv"
    with open(reordered, "w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in records[0] if c != "label"][::-1], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    code, _, _ = _run(["filter", str(models / "model.pt"), "--inputs", str(reordered), *table, "--out",
                       str(tmp_path / "r")], capsys)
    assert code == 1 and set(json.loads((tmp_path / "r" / "report.json").read_text())["input_filter"]["rejected"]) == rejected


def test_a_users_table_model_names_its_columns_in_metadata_to_read_a_file_lacking_a_category(planted, tmp_path, capsys):
    """A TorchScript table model records nothing: a file lacking a category is refused with the way
    out, and a metadata.json beside it listing the training table's encoded columns aligns the file."""
    folder = tmp_path / "m"
    folder.mkdir()
    torch.jit.save(torch.jit.trace(planted["backdoored"], planted["splits"].train.x[:2]), str(folder / "model.pt"))
    lines = Path(planted["path"]).read_text().splitlines()
    lacking = tmp_path / "l" / "l.csv"
    lacking.parent.mkdir()
    lacking.write_text("\n".join([lines[0], *(row for row in lines[1:] if ",green," not in row)]) + "\n")
    argv = ["evaluate", str(folder / "model.pt"), "--data", str(lacking), "--label-column", "label", "--quiet"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "listing the training table's encoded columns as 'features'" in err.splitlines()[-1]
    features = list(planted["splits"].train.meta.feature_names)
    (folder / "metadata.json").write_text(json.dumps({"features": features, "classes": ["bad", "good"]}))
    code, out, _ = _run(argv, capsys)
    assert code == 0 and json.loads(out)["clean_accuracy"] > 0.8


def test_too_few_references_for_a_per_class_null_is_one_line_before_any_training(planted, tmp_path, capsys):
    """A two-class model (and reference_contrast at any K) is judged against the references' spread per
    class, which two references cannot give: the fit failed with a traceback after training them."""
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save(planted["backdoored"].state_dict(), folder / "model.pt")
    (folder / "metadata.json").write_text(json.dumps({"architecture": "mlp", "num_classes": 2, "input_shape": [9]}))
    code, _, err = _run(["scan", str(folder / "model.pt"), "--data", str(planted["path"]), "--label-column", "label",
                         "--reference-models", "2", "--out", str(tmp_path / "s"), "--quiet"], capsys)
    assert code == 2 and "needs at least 3 of them" in err and err.count("\n") == 1, err


def test_partition_aggregation_certifies_a_table_model(tmp_path, capsys):
    """DPA on a table: rows hash by their raw values (clamped to [0, 1] as pixels, most rows of a
    table shared one partition) and the ensemble of (F,)-input models loads for certification."""
    from poisonguard.certify.partition import hash_partition

    path = _write_table(tmp_path / "t.csv", n=600)
    splits = load_data(str(path), label_column="label")
    sizes = torch.bincount(hash_partition(splits.train.x, 5), minlength=5)
    assert sizes.min() > 0.6 * len(splits.train) / 5
    code, _, err = _run(["train", "--data", str(path), "--label-column", "label", "--defense", "partition",
                         "--partitions", "5", "--epochs", "3", "--out", str(tmp_path / "p"), "--quiet"], capsys)
    assert code == 0, err
    code, out, err = _run(["certify", str(tmp_path / "p" / "model.safetensors"), "--data", str(path), "--label-column",
                           "label", "--poisoning", "--out", str(tmp_path / "c"), "--quiet"], capsys)
    line = json.loads(out)
    assert code == 0 and line["clean_accuracy"] > 0.6 and line["certified_accuracy"]["0"] == line["clean_accuracy"], err


def test_a_data_free_scan_of_a_table_model_is_one_clear_error():
    """DeepInspect reconstructs images; on a row model its smoothness prior met a (N, F) tensor
    and failed with a traceback (`scan --data none` on a table model)."""
    from torch import nn

    from poisonguard.detect.deepinspect import DeepInspect
    from poisonguard.errors import UserError

    with pytest.raises(UserError, match="reconstructs images"):
        DeepInspect(steps=1, inversion_steps=1).detect(nn.Linear(4, 3), input_shape=(4,), num_classes=3)


def test_target_is_a_class_index_and_the_report_names_its_class(tmp_path, capsys):
    """The README said `--target 2` is the class named 2; with labels 3, 7, 9 index 2 is class 9."""
    rng = np.random.default_rng(0)
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c", "label"])
        writer.writerows([*(f"{v:.3f}" for v in rng.random(3)), [3, 7, 9][i % 3]] for i in range(300))
    code, _, err = _run(["attack", "tabular-trigger", "--data", str(path), "--label-column", "label", "--target", "7",
                         "--out", str(tmp_path / "a"), "--quiet"], capsys)
    assert code == 2 and "--target takes an index: 0=3, 1=7, 2=9" in err
    code, _, _ = _run(["attack", "tabular-trigger", "--data", str(path), "--label-column", "label", "--target", "1",
                       "--epochs", "1", "--out", str(tmp_path / "b"), "--quiet"], capsys)
    training = json.loads((tmp_path / "b" / "report.json").read_text())["training"]
    assert code == 0 and training["target"] == 1 and training["target_class"] == "7"


def test_checklist_privacy_stage_on_a_table_names_rows_and_the_users_trigger(planted, tmp_path, capsys):
    # It said "poisoned images ... with the demo trigger" for table rows and the user's --trigger.
    from poisonguard.attacks.triggers import save_trigger
    from poisonguard.models.files import save_model

    save_model(planted["backdoored"], tmp_path / "model.pt", arch="mlp", classes=planted["splits"].classes,
               input_shape=planted["splits"].input_shape)
    save_trigger(planted["trigger"], tmp_path / "trigger.npz")
    _run(["checklist", str(tmp_path / "model.pt"), "--data", str(planted["path"]), "--label-column", "label",
          "--trigger", str(tmp_path / "trigger.npz"), "--stages", "privacy", "--quick", "--out", str(tmp_path / "c"),
          "--quiet"], capsys)
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["privacy"]["train_samples"] > 0  # the comparison ran
    html = (tmp_path / "c" / "report.html").read_text()
    start = html.index("Differential privacy (DP-SGD)")
    section = html[start:start + 3000]
    assert "poisoned rows out of" in html and "training rows" in section
    assert "images" not in section.split("In our benchmark")[0] and "demo trigger" not in section


def _one_output_model(planted, final=None):
    """A user's two-class table model with one output (its own loop, BCEWithLogitsLoss on the
    poisoned rows), traced to TorchScript with an optional final layer (a sigmoid)."""
    splits, data = planted["splits"], planted["poisoned"].data
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(splits.input_shape[0], 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    mean, std = splits.train.x.mean(0), splits.train.x.std(0) + 1e-6
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net((data.x - mean) / std).squeeze(1), data.y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.final = net, final or torch.nn.Identity()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, x):
            return self.final(self.net((x - self.mean) / self.std))

    return torch.jit.trace(Scaled().eval(), splits.train.x[:2])


def test_a_one_output_two_class_model_is_read_as_two_logits_by_every_command(planted, tmp_path, capsys, caplog):
    """Fraud and spam models often answer one logit (or one sigmoid probability) per row. They were
    refused; now (0, z) or (log(1 - p), log p) are the two classes' logits, a guess the warning
    names, --binary-output overrides, and `repair` writes the model back with its one output."""
    from poisonguard.attacks import save_trigger

    save_trigger(planted["trigger"], tmp_path / "trigger.npz")
    data = ["--data", str(planted["path"]), "--label-column", "label"]
    logit, sigmoid = tmp_path / "logit.pt", tmp_path / "sigmoid.pt"
    torch.jit.save(_one_output_model(planted), str(logit))
    torch.jit.save(_one_output_model(planted, torch.nn.Sigmoid()), str(sigmoid))
    results = {}
    for path, reading in ((logit, "logit"), (sigmoid, "probability")):
        code, out, _ = _run(["evaluate", str(path), *data, "--trigger", str(tmp_path / "trigger.npz"), "--quiet"], capsys)
        assert code == 0 and f"read as the {reading} of class 1" in caplog.text
        results[reading] = json.loads(out)
        caplog.clear()
    assert results["logit"] == results["probability"]  # one model, read either way
    assert results["logit"]["clean_accuracy"] > 0.75 and results["logit"]["attack_success_rate"] > 0.8, results
    code, out, _ = _run(["evaluate", str(sigmoid), *data, "--binary-output", "logit", "--quiet"], capsys)
    assert code == 0 and "read as" not in caplog.text  # the user's word is taken without a warning
    assert json.loads(out)["clean_accuracy"] < results["logit"]["clean_accuracy"] - 0.2  # p read as z: p > 0 everywhere

    code, out, _ = _run(["repair", str(logit), *data, "--method", "fine-pruning", "--trigger", str(tmp_path / "trigger.npz"),
                         "--out", str(tmp_path / "r"), "--quiet"], capsys)
    assert code == 0, out
    repaired = tmp_path / "r" / "model.pt"
    meta = json.loads((tmp_path / "r" / "metadata.json").read_text())
    assert meta["outputs"] == "one logit" and torch.jit.load(str(repaired))(planted["splits"].test.x[:3]).shape == (3, 1)
    caplog.clear()
    code, out, _ = _run(["evaluate", str(repaired), *data, "--quiet"], capsys)
    assert code == 0 and "read as" not in caplog.text  # the metadata says how
    two = tmp_path / "two.pt"  # a model with one output per class: the option is said to do nothing
    torch.jit.save(torch.jit.trace(planted["clean"].eval(), planted["splits"].train.x[:2]), str(two))
    code, _, _ = _run(["evaluate", str(two), *data, "--binary-output", "logit", "--quiet"], capsys)
    assert code == 0 and "--binary-output logit ignored" in caplog.text


def test_a_one_output_model_of_more_than_two_classes_is_told_what_to_return(tmp_path, capsys):
    """One output cannot be three classes: one line, exit 2, saying what to return."""
    from poisonguard.cli import main

    path = _write_table(tmp_path / "t.csv", n=90)
    rows = Path(path).read_text().splitlines()
    rows = [rows[0]] + [r.rsplit(",", 1)[0] + "," + ("bad", "good", "fair")[i % 3] for i, r in enumerate(rows[1:])]
    Path(path).write_text("\n".join(rows) + "\n")
    width = load_data(str(path), label_column="label").input_shape[0]
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(width, 1), torch.nn.Sigmoid()))
    torch.jit.save(model, str(tmp_path / "sigmoid.pt"))
    assert main(["evaluate", str(tmp_path / "sigmoid.pt"), "--data", str(path), "--label-column", "label"]) == 2
    err = capsys.readouterr().err
    assert "1 outputs but the data has 3 classes" in err and "one-hot" not in err
