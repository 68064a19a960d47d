"""The certification-method registry: `CERTIFIERS.get("randomized_smoothing")(sigma=0.5, ...)`."""

from poisonguard.registry import Registry

CERTIFIERS: Registry[type] = Registry("certification method")
