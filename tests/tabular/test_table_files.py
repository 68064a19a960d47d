"""Hostile table files: each is refused in one line before it costs much memory or time."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from poisonguard import limits
from poisonguard.data.table import read_table
from poisonguard.errors import UserError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(autouse=True)
def _fresh_limits():
    limits.reset()
    yield
    limits.reset()


def _parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def test_a_repeated_long_string_is_measured_as_decoded_not_as_stored(tmp_path):
    """One dictionary entry repeated over every row: 38 KB of file asked for 4.8 GB."""
    n = 64
    cell = pa.array(["x" * (1 << 16)] * n).dictionary_encode()
    path = _parquet(tmp_path / "t.parquet", a=pa.array([float(i) for i in range(n)]), c=cell,
                    label=pa.array(["no", "yes"] * (n // 2)))
    assert path.stat().st_size < 20_000
    limits.override(["max_bytes=1000000"])  # 64 rows of 64 KiB decode to 4 MiB
    with pytest.raises(UserError, match="decoded table's size"):
        read_table(path, label_column="label")


def test_a_cell_over_a_mebibyte_is_refused_as_in_a_csv(tmp_path):
    path = _parquet(tmp_path / "t.parquet", a=pa.array([1.0, 2.0]),
                    c=pa.array(["y" * ((1 << 20) + 1)] * 2).dictionary_encode(), label=pa.array(["no", "yes"]))
    with pytest.raises(UserError, match="a cell of 1,048,577 bytes"):
        read_table(path, label_column="label")


@pytest.mark.parametrize("column,expected", [
    (pa.array([[1, 2], [3]]), "holds list"),
    (pa.array([{"k": 1}, {"k": 2}]), "holds struct"),
])
def test_cells_that_are_not_single_values_are_refused(tmp_path, column, expected):
    """A list column was one-hot encoded as the text "[1, 2]" without a word."""
    path = _parquet(tmp_path / "t.parquet", a=pa.array([1.0, 2.0]), l=column, label=pa.array(["no", "yes"]))
    with pytest.raises(UserError, match=expected):
        read_table(path, label_column="label")


def test_a_repeated_parquet_column_name_is_one_line(tmp_path):
    path = tmp_path / "t.parquet"
    table = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0]), pa.array(["no", "yes"])],
                                 names=["a", "a", "label"])
    pq.write_table(table, path)
    with pytest.raises(UserError) as info:
        read_table(path, label_column="label")
    assert "'a' appears more than once" in str(info.value) and "\n" not in str(info.value)


def test_the_one_hot_width_is_checked_before_it_is_allocated(tmp_path):
    """300,000 rows of 1,000 categories reached 6.6 GB before the value limit refused them."""
    rows, categories = 20_000, 1_000
    lines = ["c,label"] + [f"k{i % categories},{'yes' if i % 2 else 'no'}" for i in range(rows)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "metadata.json").write_text('{"categorical": ["c"]}')
    limits.override(["max_dataset_values=1000000"])  # 20,000 x 1,000 = 2e7 values
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="rows x features"):
            read_table(tmp_path / "t.csv", label_column="label")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40e6  # the one-hot block alone would be 80 MB of float32


def test_a_number_with_underscores_is_not_a_number(tmp_path):
    """Python's float() reads "-0_123" as -123; in a table it is a typo or a category."""
    (tmp_path / "t.csv").write_text("a,b,label\n1.5,-0_123,no\n2.5,7,yes\n3.5,8,no\n4.5,9,yes\n")
    with pytest.raises(UserError, match="column 'b' is neither numeric"):
        read_table(tmp_path / "t.csv", label_column="label")


def test_the_dialect_is_guessed_in_linear_time(tmp_path):
    """csv.Sniffer on a 64 KiB sample of `,"` took 25 s before the one-line refusal."""
    (tmp_path / "t.csv").write_text("a,label\n" + ',"' * 32_000 + "\n")
    start = time.perf_counter()
    with pytest.raises(UserError):
        read_table(tmp_path / "t.csv", label_column="label")
    assert time.perf_counter() - start < 5


def test_only_the_delimiter_is_guessed_and_quoting_is_the_standards(tmp_path):
    """csv.Sniffer's whole dialect turned doubled quotes off when its 4 KiB sample had none (a
    later `"24"" monitor"` became `24" monitor"`, and sanitize wrote it back so), and took the
    apostrophe of 's-Hertogenbosch for the quote character (a valid file refused)."""
    import csv

    rows = [[i, f"{i % 7}.5", "red" if i < 250 else '24" monitor, matte', "yes" if i % 2 else "no"] for i in range(300)]
    rows[3][2] = "plain, with comma"
    with open(tmp_path / "q.csv", "w", newline="") as f:
        csv.writer(f).writerows([["age", "score", "item", "label"], *rows])
    data = read_table(tmp_path / "q.csv", label_column="label")
    assert set(data.meta.feature_names) >= {'item=24" monitor, matte', "item=plain, with comma", "item=red"}
    lines = ["city;band;x;label"] + [f"{c};{b};{i};{i % 2}" for i, (c, b) in
                                     enumerate([("'s-Hertogenbosch", "rock 'n' roll"), ("Utrecht", "jazz")] * 150)]
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    data = read_table(tmp_path / "a.csv", label_column="label")
    assert "city='s-Hertogenbosch" in data.meta.feature_names and "band=rock 'n' roll" in data.meta.feature_names
    # a space after each comma before a quoted field (", ") keeps the field whole
    (tmp_path / "s.csv").write_text("x, city, label\n" + "".join(f'{i}, "Paris, FR", {i % 2}\n' for i in range(20)))
    assert "city=Paris, FR" in read_table(tmp_path / "s.csv", label_column="label").meta.feature_names


def test_a_column_named_like_a_category_is_refused(tmp_path):
    """A numeric column "color=red" beside the category red of "color": two columns of one name,
    and a second file with its columns reordered fed one to the other (accuracy 0.75 -> 0.46)."""
    (tmp_path / "t.csv").write_text("color,color=red,label\n" + "".join(
        f"{'red' if i % 2 else 'blue'},{i / 10},{i % 3 == 0}\n" for i in range(40)))
    with pytest.raises(UserError, match="two encoded columns are both named 'color=red'"):
        read_table(tmp_path / "t.csv", label_column="label")


def test_labels_are_compared_exactly_and_1_and_1_0_stay_one_class(tmp_path):
    """Through a float, 9007199254740993 and 9007199254740992 were one class."""
    (tmp_path / "t.csv").write_text("a,label\n" + "".join(f"{i},{lab}\n" for i, lab in enumerate(
        ["9007199254740993", "9007199254740992", "1", "1.0"] * 5)))
    data = read_table(tmp_path / "t.csv", label_column="label")
    assert data.classes == ("1", "9007199254740992", "9007199254740993")


def test_numbers_written_with_separators_are_categories_with_a_warning(tmp_path, caplog):
    (tmp_path / "t.csv").write_text("income;dose;label\n" + "".join(
        f'"{["1,000", "10,000", "2,000"][i % 3]}";{["0,5", "1,5"][i % 2]};{i % 2}\n' for i in range(30)))
    with caplog.at_level("WARNING"):
        data = read_table(tmp_path / "t.csv", label_column="label")
    assert "income=1,000" in data.meta.feature_names  # still read, as the file has it
    said = [r.getMessage() for r in caplog.records]
    assert any("'income'" in m and "separators" in m for m in said) and any("'dose'" in m for m in said)
    (tmp_path / "m.csv").write_text("ca,label\n" + "".join(f"{['0', '1', '2', '?'][i % 4]},{i % 2}\n" for i in range(40)))
    caplog.clear()
    with caplog.at_level("WARNING"):
        read_table(tmp_path / "m.csv", label_column="label")
    assert any("but for '?'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    (tmp_path / "c.csv").write_text("colour,label\n" + "".join(f"{['red', 'blue', 'green'][i % 3]},{i % 2}\n" for i in range(30)))
    with caplog.at_level("WARNING"):
        read_table(tmp_path / "c.csv", label_column="label")
    assert not caplog.records  # real categories: nothing to say


def test_a_parquet_categorical_of_integers_is_categorical(tmp_path):
    """pandas' Categorical of integer codes (the file's pandas metadata says so) was read as one number."""
    pd = pytest.importorskip("pandas")
    path = tmp_path / "t.parquet"
    pd.DataFrame({"grade": pd.Categorical([1, 2, 3, 1, 2, 3, 1, 2] * 3), "x": [float(i) for i in range(24)],
                  "label": [0, 1] * 12}).to_parquet(path, index=False)
    data = read_table(path, label_column="label")
    assert data.meta.feature_names == ("grade=1", "grade=2", "grade=3", "x")
