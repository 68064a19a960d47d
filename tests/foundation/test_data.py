import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from poisonguard.data import load_data, per_class_subset
from poisonguard.data.cifar import load_cifar10_batches, load_cifar10_npz
from poisonguard.errors import UserError


def test_mnist5k_split_is_fixed_and_stratified(mnist):
    assert mnist.train.x.shape == (4000, 1, 28, 28) and mnist.test.x.shape == (1000, 1, 28, 28)
    assert mnist.train.x.dtype == torch.float32 and 0 <= mnist.train.x.min() and mnist.train.x.max() <= 1
    assert torch.equal(mnist.train.y.bincount(), torch.full((10,), 400))
    again = load_data("mnist5k", seed=123)  # the split belongs to the data set, not the seed
    assert torch.equal(again.test.y, mnist.test.y)


def test_per_class_subset_fraction_and_count(mnist):
    sub = per_class_subset(mnist.train, fraction=0.05, seed=1)
    assert len(sub) == 200 and torch.equal(sub.y.bincount(), torch.full((10,), 20))
    assert torch.equal(per_class_subset(mnist.train, fraction=0.05, seed=1).x, sub.x)
    assert len(per_class_subset(mnist.train, per_class=3)) == 30
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(UserError):
            per_class_subset(mnist.train, fraction=bad)


def _png(value, size=(8, 8), mode="L"):
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_and_zip(tmp_path):
    root = tmp_path / "imgs"
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as zf:
        for cls, value in (("cat", 10), ("dog", 200)):
            (root / cls).mkdir(parents=True)
            for i in range(10):
                (root / cls / f"{i}.png").write_bytes(_png(value))
                zf.writestr(f"imgs/{cls}/{i}.png", _png(value))
    for spec in (root, tmp_path / "imgs.zip"):
        s = load_data(str(spec))
        assert s.classes == ("cat", "dog") and s.input_shape == (1, 8, 8)
        assert len(s.train) + len(s.test) == 20
        dark = s.train.x[s.train.y == 0]
        assert torch.allclose(dark, torch.full_like(dark, 10 / 255))


def test_zip_with_traversal_names_never_writes_outside(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../../escaped/a/0.png", _png(0))
        zf.writestr("x/b/0.png", _png(255))
    load_data(str(zpath))
    assert not (tmp_path.parent / "escaped").exists()


def test_mixed_sizes_rejected(tmp_path):
    for cls, size in (("a", (8, 8)), ("b", (9, 9))):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "0.png").write_bytes(_png(0, size))
    with pytest.raises(UserError, match="differ in size"):
        load_data(str(tmp_path))


def test_npz_arrays_nhwc_uint8(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 12, 12, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_data(str(tmp_path / "d.npz"))
    assert s.input_shape == (3, 12, 12) and s.num_classes == 5 and len(s.train) + len(s.test) == 50


def test_npz_with_pickled_object_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as zf:
        zf.write(tmp_path / "obj.npy", "x.npy")
        zf.write(tmp_path / "obj.npy", "y.npy")
    with pytest.raises(UserError):
        load_data(str(tmp_path / "bad.npz"))


def test_empty_and_unknown_data(tmp_path):
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 1, 4, 4), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(UserError):
        load_data(str(tmp_path / "e.npz"))
    with pytest.raises(UserError, match="unknown data set"):
        load_data("imagenet-9000")


def _cifar_jpeg_archive(path, n=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "test"):
        blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        out[f"{split}_jpeg"] = np.concatenate(blobs)
        out[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        out[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    np.savez(path, **out)


def test_cifar_npz_decodes_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONGUARD_CACHE", str(tmp_path / "cache"))
    _cifar_jpeg_archive(tmp_path / "c.npz")
    first = load_cifar10_npz(tmp_path / "c.npz")
    assert first.train.x.shape == (6, 3, 32, 32) and len(list((tmp_path / "cache").iterdir())) == 1
    second = load_data(str(tmp_path / "c.npz"))
    assert torch.equal(first.train.x, second.train.x)


def _write_batch(path, payload):
    with open(path, "wb") as fh:
        pickle.dump(payload, fh)


def test_cifar_batches_folder_and_malicious_batch(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _write_batch(folder / name, {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]})
    s = load_data(str(folder))
    assert s.train.x.shape == (20, 3, 32, 32) and s.test.x.shape == (4, 3, 32, 32)

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _write_batch(folder / "test_batch", {b"data": Payload(), b"labels": [0]})
    with pytest.raises(UserError, match="refusing"):
        load_cifar10_batches(folder)
    assert not marker.exists()


def test_folders_as_users_have_them(tmp_path, caplog):
    """Sub-folders of a class folder belong to the class (as torchvision's ImageFolder); macOS's
    `__MACOSX/` and `._x.png`, dot files and a wrapping folder are not data; a grey JPEG among
    colour ones joins them as RGB; an empty class folder is named in a warning."""
    root = tmp_path / "photos"
    for cls, value in (("cat", 40), ("dog", 220)):
        for year in ("2019", "2020"):
            (root / cls / year).mkdir(parents=True)
            for i in range(5):
                (root / cls / year / f"{i}.png").write_bytes(_png((value,) * 3, mode="RGB"))
        (root / cls / f"._{cls}.png").write_bytes(b"\x00\x05\x16\x07 apple double, no image")
    (root / "dog" / "grey.png").write_bytes(_png(220))  # mode L among RGB
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._0.png").write_bytes(b"not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "empty").mkdir()
    with caplog.at_level("WARNING"):
        s = load_data(str(root))
    assert s.classes == ("cat", "dog") and s.input_shape == (3, 8, 8) and len(s.train) + len(s.test) == 21
    assert "empty" in caplog.text
    everything = torch.cat([s.train.x, s.test.x]), torch.cat([s.train.y, s.test.y])
    assert torch.allclose(everything[0][everything[1] == 1], torch.tensor(220 / 255))  # the grey one too
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:  # the same, zipped with a wrapping folder
        for path in root.rglob("*"):
            if path.is_file():
                zf.write(path, f"wrapper/{path.relative_to(root).as_posix()}")
    z = load_data(str(tmp_path / "photos.zip"))
    assert z.classes == ("cat", "dog") and len(z.train) + len(z.test) == 21


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    for cls, value in (("a", 1000), ("b", 60000)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(np.full((8, 8), value, np.uint16)).save(tmp_path / cls / f"{i}.png")
    s = load_data(str(tmp_path))
    x, y = torch.cat([s.train.x, s.test.x]), torch.cat([s.train.y, s.test.y])
    assert torch.allclose(x[y == 0], torch.tensor(round(1000 / 257) / 255)) and torch.allclose(x[y == 1], torch.tensor(round(60000 / 257) / 255))


def test_train_and_test_folders_of_different_sizes_are_one_line(tmp_path):
    for split, size in (("train", (8, 8)), ("test", (10, 10))):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            (tmp_path / split / cls / "0.png").write_bytes(_png(0, size))
    with pytest.raises(UserError, match="differ in size.*8x8, 10x10"):
        load_data(str(tmp_path))


def test_npz_of_four_channel_images_in_nhwc(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(20, 12, 12, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    assert load_data(str(tmp_path / "d.npz")).input_shape == (4, 12, 12)


def test_a_class_folder_name_that_is_not_utf8_becomes_a_readable_class_name(tmp_path):
    """A folder named b'caf\\xe9' gave a class name with a lone surrogate, which crashed scan's charts."""
    root = os.fsencode(tmp_path)
    for cls in (b"caf\xe9", b"ok"):
        os.makedirs(os.path.join(root, cls))
        for i in range(5):
            with open(os.path.join(root, cls, b"%d.png" % i), "wb") as handle:
                handle.write(_png(40 * i))
    classes = load_data(str(tmp_path)).train.classes
    assert classes == ("caf\ufffd", "ok")
    assert all(c.encode("utf-8") for c in classes)  # no surrogate left: every writer can encode it
    os.makedirs(os.path.join(root, b"caf\xe8"))  # differs from the first only in its non-UTF-8 byte
    for i in range(5):
        with open(os.path.join(root, b"caf\xe8", b"%d.png" % i), "wb") as handle:
            handle.write(_png(40 * i))
    with pytest.raises(UserError, match="differ only in bytes that are not UTF-8"):
        load_data(str(tmp_path))


def test_an_unexpected_failure_is_exit_4_never_the_finding_code(monkeypatch, capsys):
    """Python's exit code for a traceback is 1, which CI reads as "backdoor found"."""
    from poisonguard.cli import build_parser, main

    args = build_parser().parse_args(["inspect-file", __file__])

    def broken(_):
        raise RuntimeError("a bug")

    args.func = broken
    monkeypatch.setattr("poisonguard.cli.build_parser", lambda: type("Parser", (), {"parse_args": lambda self, argv: args})())
    assert main(["inspect-file", __file__]) == 4
    assert "internal error" in capsys.readouterr().err


def _class_folders(root, classes=("0", "1", "2"), n=5, value=None):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            (root / c / f"{i}.png").write_bytes(_png(value if value is not None else 40 + 60 * int(c)))


@pytest.mark.parametrize("train, held", [("train", "val"), ("Train", "Test"), ("Training", "Testing"),
                                         ("train", "validation")])
def test_split_folders_as_data_sets_name_them(tmp_path, caplog, train, held):
    """train/ + val/ made a class "val" out of the held-out images and dropped train/ (exit 0, accuracy
    1.0 on one class); Train/ + Test/ was read as a two-class problem."""
    _class_folders(tmp_path / "d" / train, n=8)
    _class_folders(tmp_path / "d" / held, n=3)
    with caplog.at_level("WARNING"):
        s = load_data(str(tmp_path / "d"))
    assert s.classes == ("0", "1", "2") and (len(s.train), len(s.test)) == (24, 9)
    assert ("val/ is used as the test part" in caplog.text) == (held.lower().startswith("val"))


def test_a_val_folder_beside_test_is_left_out_with_a_warning_and_a_class_lacking_from_a_split_is_named(tmp_path, caplog):
    for part, n in (("train", 6), ("val", 2), ("test", 3)):
        _class_folders(tmp_path / "d" / part, n=n)
    _class_folders(tmp_path / "d" / "test", classes=("3",), n=3)  # a class the model never trains on
    with caplog.at_level("WARNING"):
        s = load_data(str(tmp_path / "d"))
    assert s.classes == ("0", "1", "2", "3") and (len(s.train), len(s.test)) == (18, 12)
    assert "val/ left out" in caplog.text and "train/ holds no images of class(es) 3" in caplog.text


def test_images_of_two_channels_are_read_and_drawn(tmp_path):
    """(N, 2, H, W) and (N, H, W, 2) (grey + alpha) trained, then the report's picture crashed (exit 4),
    and channels-last was read as 32 channels of 32x2."""
    from poisonguard.report.plots import image_grid

    x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 2), dtype=np.uint8)
    np.savez(tmp_path / "two.npz", x=x, y=np.arange(40) % 2)
    s = load_data(str(tmp_path / "two.npz"))
    assert s.input_shape == (2, 32, 32)
    assert image_grid([[s.train.x[0], s.train.x[1]]]).startswith("data:image/png")
    assert image_grid([[torch.rand(5, 8, 8)]]).startswith("data:image/png")  # multispectral: drawn as the mean


def test_npz_labels_that_skip_classes_are_named(tmp_path, caplog):
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 8, 8), np.uint8), y=np.where(np.arange(40) % 2, 7, 3))
    with caplog.at_level("WARNING"):
        s = load_data(str(tmp_path / "d.npz"))
    assert s.num_classes == 8 and "6 of 8 classes have no training image (0, 1, 2, 4, 5 ...)" in caplog.text


def test_classes_too_small_for_a_test_part_are_one_clear_line(tmp_path, capsys):
    from poisonguard.cli import main

    _class_folders(tmp_path / "d", classes=tuple(str(i) for i in range(5)), n=2)
    assert main(["evaluate", str(tmp_path / "m.pt"), "--data", str(tmp_path / "d"), "--arch", "mnist_cnn"]) == 2
    assert "each class needs at least 3 images" in capsys.readouterr().err


def test_a_zipped_image_that_inflates_like_a_bomb_is_refused(tmp_path):
    """A PNG followed by 800 MiB of zeros is 837 KB deflated, and Pillow reads past the junk: 1.5 GB."""
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for c in ("a", "b"):
            for i in range(3):
                zf.writestr(f"{c}/{i}.png", _png(50))
        zf.writestr("a/bomb.png", _png(50) + bytes(16 << 20))  # 16 MiB of zeros: ~1000x
    with pytest.raises(UserError, match="decompression bomb"):
        load_data(str(tmp_path / "bomb.zip"))


def test_a_zip_written_with_backslashes_and_an_npz_short_of_class_names(tmp_path):
    with zipfile.ZipFile(tmp_path / "win.zip", "w") as zf:
        for c in ("a", "b"):
            for i in range(4):
                zf.writestr(f"{c}\\{i}.png", _png(50))
    assert load_data(str(tmp_path / "win.zip")).classes == ("a", "b")
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 3, classes=np.array(["a", "b"]))
    with pytest.raises(UserError, match=r"d.npz:x: label 2 has no class name \('classes' names 2\)"):
        load_data(str(tmp_path / "d.npz"))


def test_class_folders_named_like_splits_stay_classes(tmp_path):
    """Control/ and Test/ (patients in sub-folders) is a two-class data set, not a test split."""
    for cls in ("Control", "Test"):
        for patient in ("p1", "p2"):
            (tmp_path / "d" / cls / patient).mkdir(parents=True)
            for i in range(3):
                (tmp_path / "d" / cls / patient / f"{i}.png").write_bytes(_png(30 if cls == "Test" else 200))
    assert load_data(str(tmp_path / "d")).classes == ("Control", "Test")


def test_sparse_raw_bitmaps_are_no_bomb(tmp_path):
    """A BMP holds raw pixels: a mostly white drawing deflates 500x and is a legitimate image."""
    from PIL import Image

    with zipfile.ZipFile(tmp_path / "bmp.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for c in ("a", "b"):
            for i in range(3):
                buf = io.BytesIO()
                Image.new("RGB", (700, 700), (255, 255, 255)).save(buf, format="BMP")
                zf.writestr(f"{c}/{i}.bmp", buf.getvalue())
    assert load_data(str(tmp_path / "bmp.zip")).input_shape == (3, 700, 700)
