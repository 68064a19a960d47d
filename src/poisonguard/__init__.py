"""poisonguard: defences against data poisoning and backdoor attacks for PyTorch."""

__version__ = "0.1.0"

from poisonguard.errors import UserError  # noqa: E402,F401
