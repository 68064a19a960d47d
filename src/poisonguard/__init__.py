"""poisonguard: defences against data poisoning and backdoor attacks for PyTorch.

The one-line Python API (`poisonguard.load_model`, `scan`, `repair`, `certify`) lives in
`poisonguard.api` and is imported on first use, so `import poisonguard` stays light.
"""

__version__ = "0.1.0"

from poisonguard.errors import UserError  # noqa: E402,F401

_API = ("load_model", "scan", "repair", "certify")


def __getattr__(name: str):
    import importlib

    if name in ("repair", "certify"):  # subpackages of the same name, made callable (see api.callable_package)
        return importlib.import_module(f"poisonguard.{name}")
    if name in _API:
        from poisonguard import api

        return getattr(api, name)
    raise AttributeError(f"module 'poisonguard' has no attribute {name!r}")
