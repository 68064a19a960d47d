"""Audit a model zoo: every file's static safety first, then the scan verdict of each model.

`poisonguard audit DIR|MANIFEST --data D --out OUT` finds the model files (by their bytes,
`discover`), checks each with `poisonguard.filesafety.inspect_file` (an unsafe file is never
loaded), scans the safe ones for a backdoor (`behaviour.scan_model`), runs the models in
parallel on Ray (`runner`) and keeps every finished result in `OUT/audit.db` (`store`), keyed
by the file's sha256 and the settings, so a rerun only does what is left. `report` writes
`OUT/report.json["audit"]`, `OUT/report.html` and `OUT/audit.sarif`.
"""

from __future__ import annotations

from poisonguard.audit.discover import AuditItem, discover
from poisonguard.audit.settings import AuditSettings

__all__ = ["AuditItem", "AuditSettings", "discover"]
