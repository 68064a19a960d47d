"""`poisonguard fl simulate`: the report's federated block, and one-line errors."""

from __future__ import annotations

import json

from poisonguard.cli import main


def test_fl_simulate_writes_the_federated_block(tmp_path):
    out = tmp_path / "fl"
    code = main(["fl", "simulate", "--clients", "3", "--malicious", "1", "--attack", "model_replacement",
                 "--aggregator", "median", "--rounds", "1", "--batch-size", "64", "--out", str(out), "--quiet"])
    assert code == 0
    block = json.loads((out / "report.json").read_text())["federated"]
    assert block["aggregator"] == "median" and block["attack"] == "model_replacement"
    (first,) = block["rounds"]
    assert first["round"] == 1 and 0 <= first["clean_accuracy"] <= 1 and 0 <= first["attack_success_rate"] <= 1
    assert "Clean accuracy" in (out / "report.html").read_text() or "img" in (out / "report.html").read_text()


def test_fl_errors_are_one_line(tmp_path, capsys):
    assert main(["fl", "simulate", "--attack", "nope", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert main(["fl", "simulate", "--aggregator", "krum", "--clients", "4", "--malicious", "1", "--rounds", "1",
                 "--batch-size", "64", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown attack 'nope'" in err and "n > 2f + 2" in err
    # the clients train the model: a user's code is refused as train refuses it, with where it is read
    assert main(["fl", "simulate", "--arch", "mine.py:build", "--rounds", "1", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    assert "trains its built-in architectures only" in capsys.readouterr().err


def test_fl_compare_with_no_runnable_rule_is_a_user_error(tmp_path, capsys):
    """A table whose every cell failed measured nothing: exit 2 and say why, not exit 0 with gaps."""
    assert main(["fl", "compare", "--aggregators", "krum", "--attacks", "none", "--clients", "4", "--malicious", "1",
                 "--rounds", "1", "--batch-size", "64", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "krum vs none" in err and "n > 2f + 2" in err
