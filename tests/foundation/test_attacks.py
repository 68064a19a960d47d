import numpy as np
import pytest
import torch

from poisonguard.attacks import (
    ALL_TO_ALL, PatchTrigger, badnets_trigger, blended_trigger, check_trigger_fits, flip_labels, load_trigger,
    poison_dataset, save_trigger, wanet_trigger,
)
from poisonguard.data import ImageData
from poisonguard.errors import UserError


def test_badnets_patch_geometry():
    t = badnets_trigger((3, 32, 32), target=2, size=4, position="top-left", color=(1.0, 0.0, 0.5), margin=0)
    assert t.mask.sum() == 16 and t.mask[:4, :4].all()
    assert torch.allclose(t.pattern[:, 0, 0], torch.tensor([1.0, 0.0, 0.5]))
    x = torch.zeros(2, 3, 32, 32)
    out = t.apply(x)
    assert torch.equal(out[:, :, 4:, :], x[:, :, 4:, :]) and out[0, 0, :4, :4].eq(1).all()
    center = badnets_trigger((1, 28, 28), target=0, size=5, position="center")
    assert center.mask[11:16, 11:16].all() and center.mask.sum() == 25
    assert badnets_trigger((1, 28, 28), target=0, size=3, position=(2, 5)).mask[2:5, 5:8].all()


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": 40}, {"position": "nowhere"}, {"color": 2.0}, {"position": (27, 27)}])
def test_badnets_bad_arguments(kwargs):
    with pytest.raises(UserError):
        badnets_trigger((1, 28, 28), target=0, **kwargs)


def test_blended_mixes_whole_image():
    t = blended_trigger((1, 8, 8), target=1, ratio=0.2, seed=3)
    x = torch.full((1, 1, 8, 8), 0.5)
    assert torch.allclose(t.apply(x), 0.8 * x + 0.2 * t.pattern)
    with pytest.raises(UserError):
        blended_trigger((1, 8, 8), target=1, ratio=0.0)


def test_wanet_is_small_smooth_warp():
    t = wanet_trigger((1, 28, 28), target=0, k=4, strength=0.5, seed=0)
    x = torch.rand(3, 1, 28, 28)
    out = t.apply(x)
    assert out.shape == x.shape and 0 < (out - x).abs().mean() < 0.2
    assert torch.equal(t.apply(x), out)  # deterministic


def test_trigger_files_roundtrip(tmp_path):
    for trig in (badnets_trigger((1, 28, 28), target=3), wanet_trigger((3, 32, 32), target=ALL_TO_ALL)):
        save_trigger(trig, tmp_path / "t.npz")
        back = load_trigger(tmp_path / "t.npz")
        x = torch.rand(2, *((1, 28, 28) if isinstance(trig, PatchTrigger) else (3, 32, 32)))
        assert back.target == trig.target and torch.allclose(back.apply(x), trig.apply(x))
    with np.load(tmp_path / "t.npz", allow_pickle=False) as f:
        assert f["target"].dtype == np.int64


def test_trigger_files_say_who_made_them(tmp_path):
    """A file scan wrote must not be measured as "the real trigger": the origin travels with it."""
    from dataclasses import replace

    from poisonguard.report.evaluation import trigger_word

    planted = badnets_trigger((1, 28, 28), target=3)
    for trig, word in ((planted, "real"), (replace(planted, origin="reconstructed"), "reconstructed")):
        save_trigger(trig, tmp_path / "t.npz")
        assert trigger_word(load_trigger(tmp_path / "t.npz")) == word
    # a hand-made file says nothing: "given", never "real"
    np.savez(tmp_path / "hand.npz", mask=np.ones((28, 28)), pattern=np.ones((1, 28, 28)), target=np.int64(0))
    assert load_trigger(tmp_path / "hand.npz").origin is None and trigger_word(load_trigger(tmp_path / "hand.npz")) == "given"
    np.savez(tmp_path / "odd.npz", mask=np.ones((28, 28)), pattern=np.ones((1, 28, 28)), target=np.int64(0),
             origin=np.asarray("oracle"))
    with pytest.raises(UserError, match="origin"):
        load_trigger(tmp_path / "odd.npz")


def test_bad_trigger_files(tmp_path):
    np.savez(tmp_path / "a.npz", mask=np.ones((4, 4)), target=np.int64(0))
    with pytest.raises(UserError, match="pattern"):
        load_trigger(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", mask=np.ones((4, 4)), pattern=np.ones((1, 5, 5)), target=np.int64(0))
    with pytest.raises(UserError, match="do not fit"):
        load_trigger(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", mask=np.full((4, 4), 3.0), pattern=np.ones((1, 4, 4)), target=np.int64(0))
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        load_trigger(tmp_path / "c.npz")
    # a generator trigger's width sets the memory applying it takes (images x width x H x W):
    # a few kilobytes of zeros may not ask for a 65,536-channel activation
    wide = {"kind": np.array("generator"), "w1": np.zeros((65536, 1, 3, 3), np.float32), "b1": np.zeros(65536, np.float32),
            "w2": np.zeros((1, 65536, 3, 3), np.float32), "b2": np.zeros(1, np.float32), "budget": np.float32(0.3),
            "target": np.int64(0)}
    np.savez_compressed(tmp_path / "wide.npz", **wide)
    assert (tmp_path / "wide.npz").stat().st_size < 100_000
    with pytest.raises(UserError, match="channels wide"):
        load_trigger(tmp_path / "wide.npz")
    trig = badnets_trigger((1, 28, 28), target=0)
    with pytest.raises(UserError):
        check_trigger_fits(trig, (3, 32, 32), 10)
    with pytest.raises(UserError):
        check_trigger_fits(badnets_trigger((1, 28, 28), target=12), (1, 28, 28), 10)


def _toy(n=200, k=4):
    y = torch.arange(n) % k
    return ImageData(torch.rand(n, 1, 8, 8), y, tuple("abcd"[:k]))


def test_poison_dataset_counts_and_labels():
    data = _toy()
    trig = badnets_trigger((1, 8, 8), target=1, size=2)
    p = poison_dataset(data, trig, rate=0.1, seed=0)
    assert len(p.poisoned_index) == 20
    assert (data.y[p.poisoned_index] != 1).all() and (p.data.y[p.poisoned_index] == 1).all()
    untouched = torch.ones(len(data), dtype=torch.bool)
    untouched[p.poisoned_index] = False
    assert torch.equal(p.data.x[untouched], data.x[untouched]) and torch.equal(p.data.y[untouched], data.y[untouched])
    assert torch.equal(poison_dataset(data, trig, rate=0.1, seed=0).poisoned_index, p.poisoned_index)
    a2a = poison_dataset(data, badnets_trigger((1, 8, 8), target=ALL_TO_ALL, size=2), rate=0.2)
    assert torch.equal(a2a.data.y[a2a.poisoned_index], (data.y[a2a.poisoned_index] + 1) % 4)
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError):
            poison_dataset(data, trig, rate=bad)
    with pytest.raises(UserError):
        poison_dataset(data, trig, rate=0.9)  # more than the non-target images


def test_wanet_noise_mode_keeps_labels():
    data = _toy()
    p = poison_dataset(data, wanet_trigger((1, 8, 8), target=0, k=2), rate=0.1, cross_ratio=2.0)
    assert len(p.noise_index) == 40 and torch.equal(p.data.y[p.noise_index], data.y[p.noise_index])
    assert not set(p.noise_index.tolist()) & set(p.poisoned_index.tolist())


def test_flip_labels():
    data = _toy()
    p = flip_labels(data, rate=0.05, source=2, target=3)
    assert len(p.poisoned_index) == 10 and (data.y[p.poisoned_index] == 2).all() and (p.data.y[p.poisoned_index] == 3).all()
    r = flip_labels(data, rate=0.5, seed=1)
    assert (r.data.y[r.poisoned_index] != data.y[r.poisoned_index]).all()
