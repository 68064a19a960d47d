"""Which TorchScript / torch.export operators do ordinary vision, sequence and tabular models use?

Scripts, traces and exports a zoo of standard modules (torchvision classics, poisonguard's own
architectures, recurrent and attention layers) and prints every operator their graphs contain,
marked with whether `poisonguard.filesafety.operators` allows it. The allowlist was built from
this survey and then read by hand: an operator that touches files, processes, the network or
global state is left out whatever the survey finds. Rerun after a torch upgrade:

    PYTHONPATH=src python benchmarks/filesafety_operator_survey.py
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def _zoo():
    import torchvision.models as tvm

    from poisonguard.models import build_model

    yield "resnet18", tvm.resnet18(num_classes=10), torch.randn(2, 3, 32, 32)
    yield "mobilenet_v3_small", tvm.mobilenet_v3_small(num_classes=10), torch.randn(2, 3, 32, 32)
    yield "vgg11_bn", tvm.vgg11_bn(num_classes=10), torch.randn(2, 3, 32, 32)
    yield "squeezenet", tvm.squeezenet1_1(num_classes=10), torch.randn(2, 3, 64, 64)
    yield "shufflenet", tvm.shufflenet_v2_x0_5(num_classes=10), torch.randn(2, 3, 64, 64)
    yield "vit", tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                       mlp_dim=32, num_classes=10), torch.randn(2, 3, 32, 32)
    for arch, shape in (("mnist_cnn", (1, 28, 28)), ("resnet20", (3, 32, 32)), ("preact_resnet18", (3, 32, 32))):
        try:
            yield arch, build_model(arch, num_classes=10, input_shape=shape), torch.randn(2, *shape)
        except Exception:  # an architecture renamed in the registry: skip it, the survey goes on
            continue
    yield "mlp", nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.LayerNorm(16),
                               nn.Linear(16, 4), nn.Softmax(-1)), torch.randn(2, 8)
    yield "embed_lstm", _Seq(nn.LSTM), torch.randint(0, 50, (2, 7))
    yield "embed_gru", _Seq(nn.GRU), torch.randint(0, 50, (2, 7))
    yield "transformer", nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1), torch.randn(2, 5, 16)
    yield "upsample", nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.AdaptiveAvgPool2d(2),
                                    nn.MaxPool2d(1), nn.Sigmoid(), nn.Tanh(), nn.LeakyReLU(), nn.ELU()), torch.randn(2, 3, 8, 8)


class _Seq(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.rnn = rnn(16, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


def _graph_ops(graph, found: set[str]) -> None:
    for node in graph.nodes():
        found.add(node.kind())
        for block in node.blocks():
            _graph_ops(block, found)


def _static_verdict(label: str, save, verdicts: dict[str, list[str]]) -> None:
    """Save a scripted / exported model to a file and run the static scanner on it."""
    import tempfile
    from pathlib import Path

    from poisonguard.filesafety import inspect_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.bin"
        save(path)
        verdicts[label] = list(inspect_file(path).findings)


def survey(verdicts: dict[str, list[str]] | None = None) -> dict[str, set[str]]:
    """Operator name -> the models whose graphs use it; `verdicts` gets each saved file's static findings."""
    seen: dict[str, set[str]] = {}
    verdicts = {} if verdicts is None else verdicts
    warnings.simplefilter("ignore")
    for name, model, example in _zoo():
        model.eval()
        ops: set[str] = set()
        for kind, maker in (("scripted", lambda: torch.jit.script(model)), ("traced", lambda: torch.jit.trace(model, example))):
            try:
                scripted = maker()
            except Exception:
                continue
            _static_verdict(f"{name} {kind}", lambda p: torch.jit.save(scripted, str(p)), verdicts)
            for module in scripted.modules():
                for method_name in module._c._method_names():
                    _graph_ops(module._c._get_method(method_name).inlined_graph, ops)
        try:
            exported = torch.export.export(model, (example,))
            _static_verdict(f"{name} exported", lambda p: torch.export.save(exported, str(p)), verdicts)
            for node in exported.graph.nodes:
                if node.op == "call_function":
                    if hasattr(node.target, "_schema"):
                        ops.add(node.target._schema.name)
                    else:  # a Python callable such as operator.getitem, named as .pt2 files name it
                        ops.add(f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}")
        except Exception:
            pass
        for op in ops:
            seen.setdefault(op, set()).add(name)
    return seen


def main() -> None:
    from poisonguard.filesafety.operators import is_allowed_operator

    verdicts: dict[str, list[str]] = {}
    for op, models in sorted(survey(verdicts).items()):
        mark = "allowed" if is_allowed_operator(op) else "REFUSED"
        print(f"{mark:8s} {op:45s} {', '.join(sorted(models))}")
    print(f"\nstatic scan of the saved files: {sum(not f for f in verdicts.values())}/{len(verdicts)} safe")
    for label, findings in sorted(verdicts.items()):
        print(f"  {label:32s} {'safe' if not findings else 'UNSAFE: ' + '; '.join(findings[:2])}")


if __name__ == "__main__":
    main()
