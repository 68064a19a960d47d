"""Federated learning defences: robust aggregation rules, FL attacks, a simulator, Flower adapters.

Flower is optional (`pip install poisonguard[fl]`): only `poisonguard.federated.flower`
imports it, and only when used.
"""
