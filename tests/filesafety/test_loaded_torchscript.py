"""The run-time wall for TorchScript: every method's inlined graph after `torch.jit.load`."""

from __future__ import annotations

import warnings

import torch

from poisonguard.filesafety import check_loaded_torchscript


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))


def test_benign_scripted_and_traced_graphs_pass(corpus):
    root, _ = corpus
    for name in ("scripted.pt", "scripted_conv.pt", "traced.pt", "traced_conv.pt"):
        assert check_loaded_torchscript(_load(root / "benign" / name)) == [], name


def test_file_operators_in_forward_are_refused_after_load(corpus):
    # loading these runs nothing (no __setstate__); their forward would write files
    root, _ = corpus
    assert any("aten::save" in f for f in check_loaded_torchscript(_load(root / "hostile" / "forward_saves.pt")))
    found = check_loaded_torchscript(_load(root / "hostile" / "forward_reads_passwd.pt"))
    assert any("aten::from_file" in f for f in found)
    assert not list((root / "markers").iterdir())


def test_forward_hooks_are_walked_too():
    """A hook runs on every call of the module but is not among its methods: its graph is checked."""
    import filesafety_corpus as corpus

    module = corpus._HookedLinear()
    assert check_loaded_torchscript(torch.jit.script(module)) == []
    module.register_forward_pre_hook(corpus._hook_prints)
    assert any("prim::Print" in f for f in check_loaded_torchscript(torch.jit.script(module)))
    after = corpus._HookedLinear()
    after.register_forward_hook(_after_prints)
    assert any("prim::Print" in f for f in check_loaded_torchscript(torch.jit.script(after)))


def _after_prints(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
    print("HOOK")
