"""HTML report sections of the certify family (curves and tables)."""

from __future__ import annotations

from poisonguard.report import Report, img, table
from poisonguard.report.plots import line_chart
from poisonguard.results import Certification, PoisoningCertification


def smoothing_section(report: Report, cert: Certification, *, title: str = "Certified robustness (randomized smoothing)",
                      order: int = 40) -> None:
    curve = cert.extra["curve"]
    chart = line_chart(curve["radius"], {"certified accuracy": curve["certified_accuracy"]},
                       xlabel="L2 radius (pixels in [0, 1])", ylabel="certified accuracy",
                       title=f"sigma = {cert.sigma:g}, n = {cert.n:,}, alpha = {cert.alpha:g}")
    radii = list(cert.certified_accuracy)
    rows = [[*[cert.certified_accuracy[r] for r in radii], cert.abstain_rate, round(cert.seconds_per_example, 3)]]
    html = table([*[f"r = {float(r):g}" for r in radii], "abstain rate", "seconds / example"], rows) + img(chart, "certified accuracy vs radius")
    at = cert.certified_accuracy.get("0.5", cert.certified_accuracy[radii[-1]])
    summary = (f"Adding random noise (sigma {cert.sigma:g}) and voting, the model's answer is right and provably cannot be "
               f"flipped by any change of L2 size up to 0.5 on {at:.0%} of {cert.extra['examples']} test images "
               f"({cert.certified_accuracy[radii[0]]:.0%} are right with some guarantee; {cert.abstain_rate:.0%} get none).")
    report.add_section(title, html, summary=summary, order=order)


def poisoning_section(report: Report, cert: PoisoningCertification, *, order: int = 40) -> None:
    curve = cert.extra["curve"]
    chart = line_chart(curve["poisoned"], {"certified accuracy": curve["certified_accuracy"]},
                       xlabel="poisoned training samples", ylabel="certified accuracy",
                       title=f"Deep Partition Aggregation, K = {cert.partitions}")
    budgets = list(cert.certified_accuracy)
    html = table(["clean accuracy", *[f"{b} poisoned" for b in budgets]],
                 [[cert.clean_accuracy, *[cert.certified_accuracy[b] for b in budgets]]]) + img(chart, "certified accuracy vs poisoned samples")
    b = budgets[min(len(budgets) - 1, 3)]
    summary = (f"The {cert.partitions} models each learned from a separate slice of the training data and vote; "
               f"{cert.certified_accuracy[b]:.0%} of test images are answered correctly in a way that provably survives "
               f"any {b} poisoned training samples (clean accuracy {cert.clean_accuracy:.0%}).")
    report.add_section("Certified robustness to poisoning (partition aggregation)", html, summary=summary, order=order)
