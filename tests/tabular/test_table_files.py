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
