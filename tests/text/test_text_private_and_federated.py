"""DP-SGD and federated learning on text models, through the command line."""

from __future__ import annotations

import json

from poisonguard.cli import main


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dp_sgd_trains_a_text_model_and_reports_its_budget(corpus_csv, tmp_path, capsys):
    data = ["--data", str(corpus_csv), "--text-column", "text", "--label-column", "label"]
    out = tmp_path / "dp"
    assert main(["train", *data, "--dp-epsilon", "8", "--epochs", "10", "--out", str(out), "--quiet"]) == 0
    line = _last_json(capsys)
    assert line["clean_accuracy"] > 0.4  # four balanced topics: chance 0.25; seeds 0-2 gave 0.52-0.68
    report = json.loads((out / "report.json").read_text())
    assert 7 < report["privacy"]["epsilon"] <= 8 + 1e-6 and report["privacy"]["extra"]["method"] == "dp_sgd"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "tokenizer.json"}
    assert main(["train", *data, "--defense", "gaussian_augment", "--sigma", "0.25", "--out", str(tmp_path / "g"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dp" in err[0] and "gaussian_augment" in err[0]


def test_fl_simulates_a_text_federation_and_refuses_stamped_triggers(corpus_csv, tmp_path, capsys):
    data = ["--data", str(corpus_csv), "--text-column", "text", "--label-column", "label"]
    assert main(["fl", "simulate", *data, "--clients", "5", "--rounds", "5", "--out", str(tmp_path / "fl"),
                 "--quiet"]) == 0
    assert _last_json(capsys)["clean_accuracy"] > 0.6  # seeds 0-2: 0.93-0.99; chance 0.25
    assert main(["fl", "simulate", *data, "--attack", "backdoor", "--malicious", "1", "--clients", "5",
                 "--out", str(tmp_path / "bd"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stamps a trigger on images or table rows" in err[0] and "(text)" in err[0]
