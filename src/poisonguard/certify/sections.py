"""HTML report sections of the certify family (curves and tables)."""

from __future__ import annotations

from markupsafe import escape

from poisonguard.report import Report, img, table
from poisonguard.report.evaluation import counted
from poisonguard.report.plots import line_chart
from poisonguard.results import Certification, PoisoningCertification


def model_name(model: dict | None) -> str:
    """How a report names the model it certified: its file, else its architecture."""
    if not model:
        return "the model"
    return str(model.get("path") or model.get("architecture") or "the model")


def trigger_coverage(cert: Certification, trigger, data, *, scale=None) -> dict:
    """How the certified radii compare with the size of a known trigger.

    For each certified test input i (`cert.extra["indices"]`), the trigger's L2 perturbation
    ||trigger(x_i) - x_i||_2 against its certified radius r_i: only an input with
    r_i > ||trigger(x_i) - x_i|| is provably safe from that trigger. `scale` (a table's
    per-feature std) measures the change in the units the radii are in.
    """
    import torch

    index = torch.as_tensor(cert.extra["indices"], dtype=torch.long)
    x = data.x[index]
    change = trigger.apply(x) - x
    norms = (change if scale is None else change / scale).flatten(1).norm(dim=1)
    radii = torch.as_tensor(cert.radii, dtype=norms.dtype)
    correct = torch.as_tensor(cert.predictions) == data.y[index]
    covered = correct & (radii > norms)
    return {"l2_median": float(norms.median()), "l2_min": float(norms.min()), "l2_max": float(norms.max()),
            "largest_radius": float(radii.max()) if len(radii) else 0.0,
            "covered": int(covered.sum()), "examples": int(len(index))}


def _units(cert: Certification) -> tuple[str, str]:
    """(what one input is, the units of L2): table rows are smoothed in standardised units."""
    if cert.extra.get("input_space"):
        return "row", "standardised feature units"
    return "image", "pixels in [0, 1]"


def smoothing_summary(cert: Certification, *, model: dict | None = None) -> str:
    """One or two sentences from the same numbers as the table (and the trigger comparison)."""
    noun, units = _units(cert)
    radii = list(cert.certified_accuracy)
    key = "0.5" if "0.5" in cert.certified_accuracy else radii[-1]
    at = cert.certified_accuracy[key]
    text = (f"Adding random noise (sigma {cert.sigma:g}) and voting, {model_name(model)} answers right in a way that "
            f"provably cannot be flipped by any change of L2 size up to {float(key):g} ({units}) on {at:.0%} of "
            f"{counted(cert.extra['examples'], 'test ' + noun)} ({cert.certified_accuracy[radii[0]]:.0%} are right with some "
            f"guarantee; {cert.abstain_rate:.0%} get none).")
    trig = cert.extra.get("trigger")
    if trig:
        text += (f" The trigger changes {'an' if noun[0] in 'aeiou' else 'a'} {noun} by L2 {trig['l2_median']:.2f} (median), "
                 f"{trig['l2_median'] / max(trig['largest_radius'], 1e-12):.1f}x the largest radius certified "
                 f"({trig['largest_radius']:.2f}): {trig['covered']} of {counted(trig['examples'], noun)} "
                 f"{'is' if trig['covered'] == 1 else 'are'} certified against it.")
    return text


def smoothing_section(report: Report, cert: Certification, *, model: dict | None = None,
                      title: str = "Certified robustness (randomized smoothing)", order: int = 40) -> None:
    curve = cert.extra["curve"]
    noun, units = _units(cert)
    chart = line_chart(curve["radius"], {"certified accuracy": curve["certified_accuracy"]},
                       xlabel=f"L2 radius ({units})", ylabel="certified accuracy",
                       title=f"sigma = {cert.sigma:g}, n = {cert.n:,}, alpha = {cert.alpha:g}")
    radii = list(cert.certified_accuracy)
    rows = [[*[cert.certified_accuracy[r] for r in radii], cert.abstain_rate, round(cert.seconds_per_example, 3)]]
    html = (f"<p>Model certified: <code>{escape(model_name(model))}</code>.</p>"
            + table([*[f"r = {float(r):g}" for r in radii], "abstain rate", "seconds / example"], rows)
            + img(chart, "certified accuracy vs radius"))
    trig = cert.extra.get("trigger")
    if trig:
        html += table(["trigger L2 (median)", "min", "max", "largest certified radius", f"{noun}s certified against it"],
                      [[trig["l2_median"], trig["l2_min"], trig["l2_max"], trig["largest_radius"],
                        f"{trig['covered']} of {trig['examples']}"]])
    report.add_section(title, html, summary=smoothing_summary(cert, model=model), order=order)


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
               f"{cert.certified_accuracy[b]:.0%} of test inputs are answered correctly in a way that provably survives "
               f"any {b} poisoned training samples (clean accuracy {cert.clean_accuracy:.0%}).")
    report.add_section("Certified robustness to poisoning (partition aggregation)", html, summary=summary, order=order)
