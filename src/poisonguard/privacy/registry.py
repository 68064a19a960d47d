"""The registry of private trainers: `TRAINERS.get("dp_sgd")(epsilon=3).fit(model, data)`."""

from __future__ import annotations

from poisonguard.registry import Registry

TRAINERS: Registry[type] = Registry("private trainer")
