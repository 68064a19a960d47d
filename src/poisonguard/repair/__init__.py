"""Backdoor removal: one file per method, all in the `REPAIRERS` registry.

    from poisonguard.repair import REPAIRERS
    result = REPAIRERS.get("fine_pruning")(seed=0).repair(model, clean, trigger=t, test=test)
    result.model  # the repaired copy; `model` itself is unchanged
"""

from poisonguard.repair import distillation, fine_pruning, refit, unlearning, wild  # noqa: F401  (register methods)
from poisonguard.repair.base import REPAIRERS, Repairer, register_repairer
from poisonguard.repair.fine_pruning import FinePruning
from poisonguard.repair.refit import Refit
from poisonguard.repair.unlearning import Unlearning
from poisonguard.repair.wild import Wild

__all__ = ["REPAIRERS", "FinePruning", "Refit", "Repairer", "Unlearning", "Wild", "register_repairer"]

# `poisonguard.repair(model, x, y, ...)` is the Python API function of the same name (poisonguard.api).
from poisonguard.api import callable_package  # noqa: E402

callable_package(__name__)
