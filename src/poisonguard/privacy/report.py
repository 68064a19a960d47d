"""The HTML section that explains a DP run's privacy record to a non-expert."""

from __future__ import annotations

import math

from poisonguard.report import Report, table
from poisonguard.results import Privacy


def privacy_rows(privacy: Privacy) -> list[list]:
    extra = privacy.extra
    fixes = ", ".join(f"{f['layer']}: {f['from']} -> {f['to']}" for f in extra.get("fixes", [])) or "none"
    return [["epsilon spent", privacy.epsilon if math.isfinite(privacy.epsilon) else "none claimed"],
            ["delta", privacy.delta], ["accountant", privacy.accountant],
            ["noise multiplier", round(privacy.noise_multiplier, 4)], ["clipping bound C", privacy.max_grad_norm],
            ["steps", extra.get("steps")], ["sample rate", extra.get("sample_rate")],
            ["grad-sample mode", extra.get("grad_sample_mode")], ["layers replaced", fixes],
            *_input_statistics_rows(extra)]


def _input_statistics_rows(extra: dict) -> list[list]:
    stats = extra.get("input_statistics")
    if not stats:
        return []
    return [["epsilon, delta of DP-SGD", f"{extra.get('dp_sgd_epsilon'):.4g}, {extra.get('dp_sgd_delta'):.3g}"],
            ["epsilon, delta of the input statistics", f"{stats['epsilon']:.4g}, {stats['delta']:.3g}"],
            ["input statistics", stats["mechanism"]]]


def privacy_summary(privacy: Privacy) -> str:
    if privacy.accountant == "none":
        return (f"Gradient shaping: every sample's gradient was clipped to norm {privacy.max_grad_norm:g} and noised "
                f"(sigma {privacy.noise_multiplier:g}); this limits what a few poisoned samples can steer, "
                "but no privacy guarantee is claimed.")
    return (f"Trained with differential privacy (epsilon {privacy.epsilon:.2f}, delta {privacy.delta:.0e}): adding "
            "or removing any one training sample changes the chance of any outcome by at most a factor "
            f"e^{privacy.epsilon:.2f}, so a handful of poisoned samples has little pull; many poisoned samples still can.")


def privacy_section(report: Report, privacy: Privacy, *, order: int = 40) -> None:
    report.add_section("Differential privacy", table(["", "value"], privacy_rows(privacy)),
                       summary=privacy_summary(privacy), order=order)
