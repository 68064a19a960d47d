"""What an audit result depends on besides the file's bytes: the scan settings and their hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from poisonguard import __version__


@dataclass(frozen=True)
class AuditSettings:
    """The behavioural scan's settings for one model (the audit-wide ones, then the manifest's).

    `epochs`, `steps_per_epoch` and `clean_fraction` are the scan budget; `arch` and `data` may
    differ per model (manifest). The hash of all of it (and the poisonguard version) is half of
    a result's key in `audit.db`: change any and the model is scanned again.
    """

    data: str = "mnist5k"
    arch: str | None = None
    method: str = "neural_cleanse"
    epochs: int | None = None
    steps_per_epoch: int | None = None
    clean_fraction: float = 0.05
    threshold: float | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if not 0 < self.clean_fraction <= 1:
            raise ValueError(f"clean_fraction must lie in (0, 1], got {self.clean_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_model(self, *, arch: str | None = None, data: str | None = None) -> "AuditSettings":
        """These settings with a manifest line's own architecture and data, where it gives them."""
        return replace(self, arch=arch or self.arch, data=data or self.data)

    def digest(self) -> str:
        """A stable hash of what a result depends on; `device` is left out (it does not change the verdict's meaning)."""
        fields = {k: v for k, v in self.to_dict().items() if k != "device"}
        text = json.dumps({"version": __version__, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
