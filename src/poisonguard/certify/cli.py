"""`poisonguard certify`: randomized-smoothing certificates (default) or, with --poisoning,
Deep Partition Aggregation certificates of a partition ensemble."""

from __future__ import annotations

import argparse
import dataclasses
import json

from poisonguard.errors import UserError, user_values


def _budgets(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"budgets must be comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"budgets must be non-negative integers, got {text!r}")
    return values


def add_commands(sub) -> None:
    from poisonguard.cli.options import add_common, add_data, add_model

    p = sub.add_parser("certify", help="certified predictions: randomized smoothing, or --poisoning for partition ensembles",
                       description="Randomized smoothing (Cohen et al., 2019): each test image gets the smoothed prediction "
                                   "or abstains, and a certified L2 radius. With --poisoning, MODEL is a partition ensemble "
                                   "(train --defense partition) and each prediction gets the number of poisoned training "
                                   "samples it provably survives (Levine & Feizi, 2021).")
    add_model(p)
    add_data(p)
    p.add_argument("--sigma", type=float, default=0.25, help="noise standard deviation: on [0, 1] images, or in standardised units (each feature's std) on "
                        "tables (default 0.25)")
    p.add_argument("--n", type=int, default=10_000, help="noise draws to estimate the top class's probability (default 10,000)")
    p.add_argument("--n0", type=int, default=100, help="noise draws to guess the top class (default 100)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate (default 0.001)")
    p.add_argument("--max-examples", type=int, default=None, help="certify this many evenly spaced test images (default all)")
    p.add_argument("--batch-size", type=int, default=4000, help="noisy samples per forward pass")
    p.add_argument("--poisoning", action="store_true", help="MODEL is a partition ensemble: certify against poisoned training data")
    p.add_argument("--budgets", type=_budgets, default=(0, 1, 2, 5, 10, 20),
                   help="--poisoning: numbers of poisoned samples to report (default 0,1,2,5,10,20)")
    p.add_argument("--out", required=True, help="folder for report.json and report.html")
    add_common(p)
    p.set_defaults(func=cmd_certify)


def cmd_certify(args) -> int:
    from poisonguard.cli import text
    from poisonguard.cli.inputs import data_inputs, guard_out, load_checked_model, load_splits, model_inputs
    from poisonguard.report import Report

    if text.wants_text(args):
        raise UserError("certify is for image and table models, not text: smoothing needs a continuous input "
                        "space, which token ids are not")

    out = guard_out(args.out, command="certify", force=args.force, inputs=[*model_inputs(args.model), *data_inputs(args.data)])
    report = Report("certify")
    if args.poisoning:
        summary = _certify_poisoning(args, report)
    else:
        from poisonguard.certify.sections import smoothing_section
        from poisonguard.certify.smoothing import RandomizedSmoothing

        # Check the numbers before loading anything, so a typo fails at once.
        with user_values():
            method = RandomizedSmoothing(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                                         max_examples=args.max_examples, batch_size=args.batch_size,
                                         device=args.device, seed=args.seed)
        splits = load_splits(args.data, args.seed, model=args.model)
        loaded, info = load_checked_model(args.model, splits, args.arch, args=args)
        report.set("model", info)
        from poisonguard.certify.smoothing import STANDARDISED, smoothing_space

        model, test, scale = smoothing_space(loaded.model, splits)
        cert = method.certify(model, test)
        if scale is not None:
            report.set("input_space", STANDARDISED)
            cert = dataclasses.replace(cert, extra={**cert.extra, "input_space": STANDARDISED})
        report.set("certification", cert)
        smoothing_section(report, cert, model=info)
        summary = {"certified_accuracy": cert.certified_accuracy, "abstain_rate": cert.abstain_rate,
                   "seconds_per_example": round(cert.seconds_per_example, 4)}
    path = report.write(out)
    print(json.dumps({"report": str(path), **summary}))
    return 0


def _certify_poisoning(args, report) -> dict:
    from poisonguard.certify.ensemble import load_ensemble
    from poisonguard.certify.poisoning import PartitionAggregation
    from poisonguard.certify.sections import poisoning_section
    from poisonguard.cli.inputs import load_splits

    with user_values():
        method = PartitionAggregation(budgets=args.budgets)
    splits = load_splits(args.data, args.seed)
    ensemble, meta = load_ensemble(args.model)
    if tuple(meta["input_shape"]) != tuple(splits.input_shape) or meta["num_classes"] != splits.num_classes:
        raise UserError(f"the ensemble takes {tuple(meta['input_shape'])} inputs with {meta['num_classes']} classes, "
                        f"but the data has {splits.input_shape} and {splits.num_classes}")
    test = splits.test
    if args.max_examples is not None:
        from poisonguard.certify.smoothing import evenly_spaced

        if args.max_examples < 1:
            raise UserError(f"max examples must be at least 1, got {args.max_examples}")
        test = test.subset(evenly_spaced(len(test), args.max_examples))
    report.set("model", {"path": str(args.model), "sha256": meta["sha256"], "num_classes": meta["num_classes"],
                         "input_shape": meta["input_shape"], "format": meta["format"],
                         "architecture": f"partition_ensemble({meta['base_architecture']} x {meta['partitions']})"})
    cert = method.certify(ensemble, test)
    report.set("poisoning_certification", cert)
    poisoning_section(report, cert)
    return {"clean_accuracy": cert.clean_accuracy, "certified_accuracy": cert.certified_accuracy,
            "median_certified": cert.median_certified}
