"""Hostile inputs, built here by hand: each gets one line and exit 2 (or a warning), never a
traceback; memory bombs are refused before they allocate; nothing the user gave changes.

The memory bombs run in one child process whose peak resident memory is compared with its
own baseline after importing torch (an address-space limit cannot be used: importing torch
alone maps over 3 GB).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from poisonguard import limits
from poisonguard.cli import main
from poisonguard.errors import UserError

SHAPE = (1, 8, 8)


# ---------------------------------------------------------------- builders

def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npy_header(shape, dtype="|u1") -> bytes:
    """An .npy header alone (version 1.0) claiming `shape`."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype, tuple(shape))
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _zeros_deflate(prefix: bytes, n_zeros: int) -> bytes:
    """A raw deflate stream of `prefix` + n_zeros zero bytes, built from one compressed 64 MiB
    block repeated (each block starts from a full flush, so copies are valid), in milliseconds."""
    block = 64 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(n_zeros, block)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = c.compress(bytes(rest)) + c.flush()
    return head + piece * full + tail


def _raw_zip(path: Path, members: list[dict]) -> Path:
    """Write a zip by hand: each member dict has name, data (as stored), and optionally size
    (declared uncompressed), crc, method (0 stored, 8 deflate, 99 AES), flags."""
    out, central = bytearray(), bytearray()
    for m in members:
        name = m["name"].encode()
        data = m["data"]
        method = m.get("method", 0)
        size = m.get("size", len(data))
        crc = m.get("crc", zlib.crc32(data) if method == 0 else 0)
        flags = m.get("flags", 0)
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, len(data), size, len(name), 0)
        out += name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0, 0x21, crc, len(data),
                               size, len(name), 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def _png(value: int = 128, size=(8, 8), mode="L") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixel data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _tiny_npz(path: Path, *, n=40, shape=SHAPE, classes=2) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n, *shape), dtype=np.uint8), y=np.arange(n) % classes)
    return path


def _cifar_npz(path: Path, blobs: list[bytes], labels, **override) -> Path:
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    jpeg = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    arrays = {"train_jpeg": jpeg, "train_offsets": offsets, "train_labels": np.asarray(labels),
              "test_jpeg": jpeg, "test_offsets": offsets, "test_labels": np.asarray(labels)}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def _jpeg32(value=100) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_symlink() and p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(capsys, *argv):
    """(exit code, stderr) of the CLI; argparse's SystemExit counts as an exit code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def refused(capsys, *argv, match: str) -> str:
    code, err = run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("removed ")]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert match.lower() in err.lower(), err
    return err


@pytest.fixture(autouse=True)
def _fresh_limits():
    limits.reset()
    yield
    limits.reset()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The user's files: a tiny data set and a tiny model for it (untrained: the checks come first)."""
    from poisonguard.models import build_model, save_model

    root = tmp_path_factory.mktemp("inputs")
    _tiny_npz(root / "tiny.npz")
    model = build_model("mnist_cnn", num_classes=2, input_shape=SHAPE, seed=0)
    (root / "m").mkdir()
    save_model(model, root / "m" / "model.pt", arch="mnist_cnn", classes=("0", "1"), input_shape=SHAPE)
    return root


# ---------------------------------------------------------------- .npz data

def test_hostile_npz_files(inputs, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    ok = np.arange(64, dtype=np.uint8).reshape(1, 1, 8, 8)
    np.savez(bad / "crc.npz", x=np.repeat(ok, 4, axis=0), y=np.arange(4) % 2)
    blob = bytearray((bad / "crc.npz").read_bytes())
    at = blob.find(bytes(range(20, 40)))
    blob[at] ^= 0xFF
    (bad / "crc.npz").write_bytes(bytes(blob))
    _raw_zip(bad / "claims.npz", [{"name": "x.npy", "data": _npy_header((10**12,))},
                                  {"name": "y.npy", "data": _npy(np.zeros(2, np.int64))}])
    y = np.arange(4) % 2
    np.savez(bad / "strings.npz", x=np.array(["a", "b", "c", "d"]), y=y)
    np.savez(bad / "structured.npz", x=np.zeros(4, dtype=[("a", "u1"), ("b", "f4")]), y=y)
    np.savez(bad / "complex.npz", x=np.zeros((4, 1, 8, 8), np.complex64), y=y)
    np.savez(bad / "datetime.npz", x=np.zeros((4, 1, 8, 8), "datetime64[s]"), y=y)
    np.savez(bad / "object.npz", x=np.array([1, "a", None, 2.0], dtype=object), y=y)
    np.savez(bad / "labels.npz", x=np.zeros((2, 1, 4, 4), np.uint8), y=np.array([0, 10**8]))
    np.savez(bad / "strlabels.npz", x=np.zeros((2, 1, 4, 4), np.uint8), y=np.array(["0", "1"]))
    np.savez(bad / "nan.npz", x=np.full((4, 1, 8, 8), np.nan, np.float32), y=y)
    (bad / "notzip.npz").write_bytes(b"not a zip at all")
    with zipfile.ZipFile(bad / "twice.npz", "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it is asked to write
        archive.writestr("x.npy", _npy(np.zeros((4, 1, 8, 8), np.uint8)))
        archive.writestr("y.npy", _npy(y))
        archive.writestr("y.npy", _npy(np.full(4, 1)))  # a second y: which one a reader takes differs
    np.savez(bad / "classes_twice.npz", x=np.zeros((4, 1, 8, 8), np.uint8), y=y, classes=np.array(["a", "a"]))
    np.savez(bad / "half_test.npz", x=np.zeros((4, 1, 8, 8), np.uint8), y=y, x_test=np.zeros((2, 1, 8, 8), np.uint8))
    (bad / "mem.npz").symlink_to("/proc/self/mem")
    os.mkfifo(bad / "fifo.npz")
    before = _checksums(bad)
    model = inputs / "m" / "model.pt"
    cases = {"crc.npz": "crc", "claims.npz": "max_values", "strings.npz": "string", "structured.npz": "structured",
             "complex.npz": "complex", "datetime.npz": "datetime", "object.npz": "object",
             "labels.npz": "max_classes", "strlabels.npz": "string", "nan.npz": "finite", "notzip.npz": "cannot read", "twice.npz": "appears more than once", "classes_twice.npz": "'a' appears more than once",
             "half_test.npz": "come together",
             "mem.npz": "cannot read", "fifo.npz": "not a regular file"}
    for name, match in cases.items():
        refused(capsys, "evaluate", model, "--data", bad / name, match=match)
    assert _checksums(bad) == before


def test_limit_raised_by_option_and_environment(tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 1, 4, 4), np.uint8), y=np.array([0, 1, 2, 500]))
    err = refused(capsys, "scan", tmp_path / "none.pt", "--data", tmp_path / "labels.npz", "--out", tmp_path / "o",
                  "--limit", "max_classes=100", match="--limit max_classes=N or POISONGUARD_MAX_CLASSES=N")
    assert "501" in err
    from poisonguard.data import load_data

    monkeypatch.setenv("POISONGUARD_MAX_CLASSES", "1000")
    assert load_data(str(tmp_path / "labels.npz")).num_classes == 501
    monkeypatch.setenv("POISONGUARD_MAX_CLASSES", "100")
    with pytest.raises(UserError, match="max_classes"):
        load_data(str(tmp_path / "labels.npz"))
    refused(capsys, "scan", tmp_path / "none.pt", "--data", "none", "--out", tmp_path / "o", "--limit", "pixels",
            match="NAME=N")


# ---------------------------------------------------------------- image zips and folders

def test_hostile_image_zips(inputs, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    png = _png()
    good = [{"name": "0/a.png", "data": png}, {"name": "1/b.png", "data": png}]
    _raw_zip(bad / "crc.zip", [good[0], {"name": "1/b.png", "data": png, "crc": 1234}])
    _raw_zip(bad / "encrypted.zip", [good[0], {"name": "1/b.png", "data": png, "flags": 1}])
    _raw_zip(bad / "aes.zip", [good[0], {"name": "1/b.png", "data": png, "method": 99}])
    _raw_zip(bad / "notimage.zip", [good[0], {"name": "1/b.png", "data": b"this is no png"}])
    _raw_zip(bad / "huge.zip", [good[0], {"name": "1/b.png", "data": _zeros_deflate(b"", 1 << 20), "method": 8,
                                          "size": 2 << 30}])
    # declares 100 bytes, inflates to 1 MiB: zipfile stops at the declared size, the CRC then fails
    _raw_zip(bad / "liar.zip", [good[0], {"name": "1/b.png", "data": _zeros_deflate(png, 1 << 20), "method": 8,
                                          "size": 100, "crc": zlib.crc32(png)}])
    _raw_zip(bad / "bomb.zip", [good[0], {"name": "1/b.png", "data": _png_header(30000, 30000)}])
    _raw_zip(bad / "dots.zip", [{"name": "0/./a.png", "data": png}, {"name": "1//b.png", "data": png},
                                {"name": "1/c.png", "data": png}])
    before = _checksums(bad)
    model = inputs / "m" / "model.pt"
    cases = {"crc.zip": "crc", "encrypted.zip": "encrypted", "aes.zip": "compression method 99",
             "notimage.zip": "cannot decode image", "huge.zip": "max_bytes", "liar.zip": "cannot read",
             "bomb.zip": "max_pixels"}
    for name, match in cases.items():
        refused(capsys, "evaluate", model, "--data", bad / name, match=match)
    from poisonguard.data import load_data

    splits = load_data(str(bad / "dots.zip"))
    assert splits.classes == ("0", "1") and len(splits.train) + len(splits.test) == 3
    assert _checksums(bad) == before


def test_image_folder_symlinks_out_are_skipped(tmp_path, caplog):
    from poisonguard.data import load_data

    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(_png(40 * i))
    (tmp_path / "secret.png").write_bytes(_png(7))
    (root / "a" / "mem.png").symlink_to("/proc/self/mem")
    (root / "a" / "out.png").symlink_to(tmp_path / "secret.png")
    (root / "b" / "linkdir").symlink_to(tmp_path)
    (root / "b" / "inside.png").symlink_to(root / "b" / "0.png")  # stays inside: allowed
    os.mkfifo(root / "b" / "fifo.png")
    with caplog.at_level(logging.WARNING):
        splits = load_data(str(root))
    assert len(splits.train) + len(splits.test) == 7
    assert "skipped 4" in caplog.text and "mem.png" in caplog.text


def test_unreadable_and_special_files(tmp_path, capsys, inputs):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "0.png").write_bytes(_png())
    (root / "b" / "1.png").write_bytes(b"\x89PNG truncated")
    refused(capsys, "evaluate", inputs / "m" / "model.pt", "--data", root, match="cannot decode image")
    from poisonguard.data.images import read_file

    with pytest.raises(UserError, match="cannot read"):
        read_file("/proc/self/mem")


# ---------------------------------------------------------------- CIFAR archives and batches

def test_hostile_cifar_archives(tmp_path, capsys, monkeypatch, inputs):
    monkeypatch.setenv("POISONGUARD_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad"
    bad.mkdir()
    jpeg = _jpeg32()
    _cifar_npz(bad / "corrupt.npz", [jpeg, b"\xff\xd8\xff garbage"], [0, 1])
    _cifar_npz(bad / "empty_offsets.npz", [jpeg], [0], train_offsets=np.zeros(0, np.int64))
    _cifar_npz(bad / "bomb.npz", [jpeg, _png_header(30000, 30000)], [0, 1])
    _cifar_npz(bad / "zero.npz", [], [])
    _cifar_npz(bad / "strlabels.npz", [jpeg, jpeg], ["cat", "dog"])
    _cifar_npz(bad / "badlabel.npz", [jpeg, jpeg], [0, 12])
    batches = bad / "batches"
    batches.mkdir()
    import pickle

    data = np.zeros((2, 3072), np.float32)
    data[0, 0] = np.nan
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}))
    strbatches = bad / "strbatches"
    strbatches.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (strbatches / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}))
    before = _checksums(bad)
    model = inputs / "m" / "model.pt"
    cases = {"corrupt.npz": "cannot decode image", "empty_offsets.npz": "offsets", "bomb.npz": "900,000,000 pixels",
             "zero.npz": "no images", "strlabels.npz": "string", "badlabel.npz": "lie in [0, 9]",
             "batches": "uint8", "strbatches": "integers"}
    for name, match in cases.items():
        refused(capsys, "evaluate", model, "--data", bad / name, match=match)
    assert _checksums(bad) == before


def test_cifar10_never_taken_from_the_current_folder(tmp_path, monkeypatch):
    from poisonguard.data import cifar

    planted = tmp_path / "work" / ".." / "shared" / "data"
    planted.mkdir(parents=True)
    (planted / "cifar10_jpeg.npz").write_bytes(b"planted")
    (tmp_path / "work").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("POISONGUARD_CIFAR10", raising=False)
    found = cifar.default_cifar10_path()
    assert found is None or not found.is_relative_to(tmp_path.resolve())
    monkeypatch.setenv("POISONGUARD_CIFAR10", str(planted / "cifar10_jpeg.npz"))
    assert cifar.default_cifar10_path() == (planted / "cifar10_jpeg.npz").resolve()
    monkeypatch.setenv("POISONGUARD_CIFAR10", str(tmp_path / "missing.npz"))
    with pytest.raises(UserError, match="POISONGUARD_CIFAR10"):
        cifar.default_cifar10_path()


# ---------------------------------------------------------------- options and trigger files

def test_bad_option_values_one_line(inputs, tmp_path, capsys):
    data, model, out = inputs / "tiny.npz", inputs / "m" / "model.pt", tmp_path / "out"
    refused(capsys, "evaluate", model, "--data", data, "--seed", "-1", match="--seed")
    refused(capsys, "evaluate", model, "--data", data, "--seed", "1" * 23, match="--seed")
    refused(capsys, "evaluate", model, "--data", data, "--device", "meta", match="--device")
    for position in ("a,b", "1,2,3"):
        refused(capsys, "attack", "badnets", "--data", data, "--position", position, "--out", out, match="--position")
    refused(capsys, "attack", "badnets", "--data", data, "--color", "abc", "--out", out, match="--color")
    refused(capsys, "attack", "badnets", "--data", data, "--position", "7,7", "--out", out, match="does not fit")
    refused(capsys, "train", "--data", data, "--lr", "nan", "--out", out, match="--lr")
    (tmp_path / "big.png").write_bytes(_png_header(30000, 30000))
    refused(capsys, "attack", "blended", "--data", data, "--blend-image", tmp_path / "big.png", "--out", out,
            match="max_pixels")
    refused(capsys, "attack", "blended", "--data", data, "--blend-image", tmp_path / "missing.png", "--out", out,
            match="cannot read")
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block forever
    refused(capsys, "attack", "blended", "--data", data, "--blend-image", tmp_path / "fifo.png", "--out", out,
            match="not a regular file")
    np.savez(tmp_path / "one.npz", x=np.zeros((200, 1, 1, 1), np.uint8), y=np.arange(200) % 2)
    refused(capsys, "train", "--data", tmp_path / "one.npz", "--epochs", "1", "--out", out, match="cannot take 1x1x1 images")
    refused(capsys, "fl", "simulate", "--data", tmp_path / "one.npz", "--clients", "2", "--out", out,
            match="cannot take 1x1x1 images")
    refused(capsys, "scan", model, "--data", "none", "--input-shape", "1,30000,30000", "--out", out,
            match="max_input_values")
    refused(capsys, "checklist", model, "--data", data, "--stages", "scan,bogus", "--out", out, match="unknown stage")
    refused(capsys, "fl", "simulate", "--data", data, "--aggregator", "multi_krum", "--agg-opt", "m=abc", "--out", out,
            match="--agg-opt m='abc'")
    refused(capsys, "fl", "simulate", "--data", data, "--attack", "model_replacement", "--attack-opt", "bogus=1",
            "--out", out, match="--attack-opt bogus")


def test_hostile_trigger_files(inputs, tmp_path, capsys):
    bad = tmp_path / "triggers"
    bad.mkdir()
    mask, pattern, target = np.zeros((8, 8), np.float32), np.zeros(SHAPE, np.float32), np.int64(0)
    np.savez(bad / "strmask.npz", mask=np.full((8, 8), "x"), pattern=pattern, target=target)
    np.savez(bad / "complex.npz", mask=mask, pattern=pattern.astype(np.complex64), target=target)
    np.savez(bad / "nan.npz", mask=np.full((8, 8), np.nan, np.float32), pattern=pattern, target=target)
    np.savez(bad / "shape.npz", mask=np.zeros((2, 8, 8), np.float32), pattern=pattern, target=target)
    np.savez(bad / "fits.npz", mask=np.zeros((9, 9), np.float32), pattern=np.zeros((1, 9, 9), np.float32), target=target)
    np.savez(bad / "target.npz", mask=mask, pattern=pattern, target=np.float32(0.5))
    np.savez(bad / "object.npz", mask=np.array([None, 1], dtype=object), pattern=pattern, target=target)
    np.savez(bad / "empty.npz", mask=np.zeros((0, 0), np.float32), pattern=np.zeros((1, 0, 0), np.float32), target=target)
    np.savez(bad / "kind.npz", kind=np.asarray("evil"), target=target)
    os.mkfifo(bad / "fifo.npz")
    _raw_zip(bad / "claims.npz", [{"name": "mask.npy", "data": _npy_header((10**6, 10**6), "<f4")}])
    before = _checksums(bad)
    cases = {"strmask.npz": "string", "complex.npz": "complex", "nan.npz": "[0, 1]", "shape.npz": "(h, w)",
             "fits.npz": "trigger is for inputs", "target.npz": "float", "object.npz": "object", "empty.npz": "empty",
             "kind.npz": "unknown trigger kind", "claims.npz": "max_values", "fifo.npz": "not a regular file"}
    for name, match in cases.items():
        refused(capsys, "evaluate", inputs / "m" / "model.pt", "--data", inputs / "tiny.npz", "--trigger", bad / name,
                match=match)
    assert _checksums(bad) == before


def test_diverged_training_is_not_saved(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, "train", "--data", inputs / "tiny.npz", "--epochs", "3", "--optimizer", "sgd", "--lr", "1e30",
            "--quiet", "--out", out, match="NaN or Inf")
    assert not (out / "model.pt").exists() and not (out / "metadata.json").exists()


def test_mathtext_in_class_names_is_plain_text():
    import torch

    from poisonguard.report.plots import bar_chart, image_grid

    label = "$\\frac{1}{$"
    assert image_grid([[torch.rand(1, 8, 8)]], row_titles=[label], col_titles=[label]).startswith("data:image/png")
    assert bar_chart([1.0, 2.0], labels=[label, "b"], title=label).startswith("data:image/png")


# ---------------------------------------------------------------- --out never overwrites an input

def test_out_refuses_inputs_and_unwritable_places(inputs, tmp_path, capsys):
    before = _checksums(inputs)
    model, data = inputs / "m" / "model.pt", inputs / "tiny.npz"
    refused(capsys, "evaluate", model, "--data", data, "--out", "", match="--out is empty")
    refused(capsys, "evaluate", model, "--data", data, "--out", inputs / "m", match="holds the model")
    # checklist writes OUT/repaired/model.pt: the input X/repaired/model.pt must not be inside OUT
    x = tmp_path / "x"
    (x / "repaired").mkdir(parents=True)
    import shutil

    shutil.copy(model, x / "repaired" / "model.pt")
    shutil.copy(inputs / "m" / "metadata.json", x / "repaired" / "metadata.json")
    refused(capsys, "checklist", x / "repaired" / "model.pt", "--data", data, "--out", x, match="holds the model")
    refused(capsys, "attack", "badnets", "--data", data, "--out", inputs, match="holds the data")
    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / "trigger_1.npz").write_bytes(b"x")
    refused(capsys, "repair", model, "--data", data, "--from-scan", scan, "--out", scan, match="is the --from-scan folder")
    refused(capsys, "repair", model, "--data", data, "--from-scan", scan, "--out", scan / "sub", match="lies inside")
    (tmp_path / "afile").write_text("x")
    refused(capsys, "evaluate", model, "--data", data, "--out", tmp_path / "afile" / "sub", match="which is a file")
    own = tmp_path / "own"
    own.mkdir()
    (own / "model.pt").write_bytes(b"the user's own model")
    refused(capsys, "attack", "badnets", "--data", data, "--out", own, match="did not write")
    assert (own / "model.pt").read_bytes() == b"the user's own model"
    if Path("/sys").is_dir():
        refused(capsys, "evaluate", model, "--data", data, "--out", "/sys/poisonguard-out", match="cannot write")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        refused(capsys, "evaluate", model, "--data", data, "--out", ro / "o", match="cannot write")
    assert _checksums(inputs) == before and _checksums(x)["repaired/model.pt"] == before["m/model.pt"]


def test_out_claims_and_stale_outputs(inputs, tmp_path, capsys):
    from poisonguard.cli.inputs import MARKER, data_inputs, guard_out, model_inputs

    out = tmp_path / "out"
    given = [*model_inputs(inputs / "m" / "model.pt"), *data_inputs(str(inputs / "tiny.npz"))]
    guard_out(str(out), command="scan", inputs=given)
    assert json.loads((out / MARKER).read_text())["command"] == "scan"
    (out / "trigger_3.npz").write_bytes(b"old")
    (out / "report.json").write_text(json.dumps({"command": "scan"}))
    # another command: refused unless --force
    with pytest.raises(UserError, match="outputs of `poisonguard scan`"):
        guard_out(str(out), command="repair", inputs=given)
    # the same command on other inputs: refused
    with pytest.raises(UserError, match="other inputs"):
        guard_out(str(out), command="scan", inputs=[*model_inputs(inputs / "m" / "model.pt"), ("data", "mnist5k")])
    # the same command on the same inputs reruns; its old trigger files go first
    guard_out(str(out), command="scan", inputs=given)
    assert not (out / "trigger_3.npz").exists() and not (out / "report.json").exists()
    (out / "trigger_5.npz").write_bytes(b"old")
    guard_out(str(out), command="repair", inputs=given, force=True)
    assert not (out / "trigger_5.npz").exists()
    assert json.loads((out / MARKER).read_text())["command"] == "repair"
    # a folder from before markers: report.json's command identifies it
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "report.json").write_text(json.dumps({"command": "fl"}))
    with pytest.raises(UserError, match="poisonguard fl"):
        guard_out(str(legacy), command="scan")
    guard_out(str(legacy), command="fl-simulate", inputs=[("data", "mnist5k")])
    assert not (legacy / "report.json").exists()


# ---------------------------------------------------------------- memory bombs, measured in a child

CHILD = textwrap.dedent("""
    import json, resource, sys, contextlib, io
    import torch  # the baseline includes torch, as the issue asks
    from poisonguard.cli import main
    import poisonguard.data, poisonguard.models, PIL.Image, PIL.PngImagePlugin  # imported by every run anyway
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException as exc:
                code = repr(exc)
        results.append([code, err.getvalue()])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_kb": base, "peak_kb": peak, "results": results}))
""")


def test_memory_bombs_refused_before_allocating(inputs, tmp_path):
    bombs = tmp_path / "bombs"
    bombs.mkdir()
    # 2.7 GB of zeros in a ~3 MB deflate stream, with a true header and declared size
    n = 2_700_000_000
    x = _zeros_deflate(_npy_header((n // 64, 1, 8, 8)), n)
    _raw_zip(bombs / "bomb.npz", [{"name": "x.npy", "data": x, "method": 8, "size": len(_npy_header((1,))) + n},
                                  {"name": "y.npy", "data": _npy(np.zeros(2, np.int64))}])
    np.savez_compressed(bombs / "labels.npz", x=np.zeros((2, 1, 4, 4), np.uint8), y=np.array([0, 10**8]))
    png = _png()
    _raw_zip(bombs / "member.zip", [{"name": "0/a.png", "data": png},
                                    {"name": "1/b.png", "data": _zeros_deflate(b"", 2 << 30), "method": 8, "size": 2 << 30}])
    (bombs / "big.png").write_bytes(_png_header(30000, 30000))
    blobs = [_jpeg32(), _png_header(30000, 30000)]
    _cifar_npz(bombs / "cifar.npz", blobs, [0, 1])
    assert sum(p.stat().st_size for p in bombs.iterdir()) < 16 << 20
    before = _checksums(bombs)
    model = str(inputs / "m" / "model.pt")
    out = str(tmp_path / "out")
    runs = [
        (["evaluate", model, "--data", str(bombs / "bomb.npz")], "max_"),
        (["evaluate", model, "--data", str(bombs / "labels.npz")], "max_classes"),
        (["evaluate", model, "--data", str(bombs / "member.zip")], "max_bytes"),
        (["scan", model, "--data", "none", "--input-shape", "1,30000,30000", "--out", out], "max_input_values"),
        (["attack", "blended", "--data", str(inputs / "tiny.npz"), "--blend-image", str(bombs / "big.png"),
          "--out", out], "max_pixels"),
        (["evaluate", model, "--data", str(bombs / "cifar.npz")], "max_pixels"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1",
           "POISONGUARD_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([r[0] for r in runs])], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for (argv, match), (code, err) in zip(runs, report["results"]):
        assert code == 2 and "Traceback" not in err and match in err, (argv, code, err)
    extra_mb = (report["peak_kb"] - report["base_kb"]) / 1024
    assert extra_mb < 1536, f"peak {extra_mb:.0f} MB above the baseline after importing torch"
    assert _checksums(bombs) == before


def test_deeply_nested_json_is_one_clear_error(tmp_path):
    """JSON nested 100,000 deep makes Python's decoder raise RecursionError, which is not a
    ValueError: every reader of a user's JSON (triggers, tokenizers, model.json, manifests,
    table metadata, shard indexes) turned it into a traceback."""
    from poisonguard.audit.discover import _jsonl_entries
    from poisonguard.data.table import _metadata
    from poisonguard.errors import UserError
    from poisonguard.jsonfile import read_tagged_json
    from poisonguard.models.formats.weights import _sharded

    deep = "[" * 100_000
    (tmp_path / "deep.json").write_text(deep)
    with pytest.raises(UserError, match="not a tokenizer JSON"):
        read_tagged_json(tmp_path / "deep.json", fmt="x", what="tokenizer")
    with pytest.raises(UserError, match="not a JSON object"):
        list(_jsonl_entries(tmp_path / "m.jsonl", deep))
    (tmp_path / "metadata.json").write_text(deep)
    with pytest.raises(UserError, match="not valid JSON"):
        _metadata(tmp_path / "table.csv")
    (tmp_path / "model.index.json").write_text(deep)
    with pytest.raises(UserError, match="sharded checkpoint index"):
        _sharded(tmp_path / "model.index.json")


def test_a_json_integer_of_thousands_of_digits_is_one_clear_error(tmp_path):
    """Python refuses to convert an integer of over 4300 digits with a ValueError that is not a
    JSONDecodeError: a tokenizer, text trigger or text model.json holding one was a traceback."""
    from poisonguard.attacks.text import is_text_trigger_file, load_text_trigger
    from poisonguard.errors import UserError
    from poisonguard.jsonfile import read_tagged_json

    huge = "9" * 5000
    (tmp_path / "t.json").write_text('{"format": "poisonguard-text-trigger", "kind": "words", "target": ' + huge + "}")
    with pytest.raises(UserError, match="not a text trigger JSON"):
        load_text_trigger(tmp_path / "t.json")
    assert not is_text_trigger_file(tmp_path / "t.json")
    (tmp_path / "tok.json").write_text('{"format": "x", "max_len": ' + huge + "}")
    with pytest.raises(UserError, match="not a tokenizer JSON"):
        read_tagged_json(tmp_path / "tok.json", fmt="x", what="tokenizer")
