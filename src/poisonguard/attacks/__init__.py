"""Attacks used to test the defences: triggers, poisoning, and the attack registry."""

from poisonguard.attacks.patches import badnets_trigger, blended_trigger
from poisonguard.attacks.poison import Poisoned, flip_labels, poison_dataset
from poisonguard.attacks.triggers import (
    ALL_TO_ALL, PatchTrigger, Trigger, WarpTrigger, attack_eligible, check_trigger_fits,
    load_trigger, save_trigger, target_labels,
)
from poisonguard.attacks.wanet import wanet_trigger

# Attacks that stamp a trigger; `label_flip` is the one attack with no trigger.
TRIGGER_ATTACKS = {"badnets": badnets_trigger, "blended": blended_trigger, "wanet": wanet_trigger}
ATTACK_NAMES = (*TRIGGER_ATTACKS, "label_flip")

__all__ = [
    "ALL_TO_ALL", "ATTACK_NAMES", "PatchTrigger", "Poisoned", "TRIGGER_ATTACKS", "Trigger", "WarpTrigger",
    "attack_eligible", "badnets_trigger", "blended_trigger", "check_trigger_fits", "flip_labels",
    "load_trigger", "poison_dataset", "save_trigger", "target_labels", "wanet_trigger",
]
