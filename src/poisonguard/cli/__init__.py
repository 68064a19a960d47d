"""The `poisonguard` command line: a thin layer over the library.

Each part of the command line is a module with `add_commands(subparsers)`: the foundation
commands (attack, train, evaluate, checklist, demo) in `poisonguard.cli.commands`, each defence
family's in `poisonguard/<family>/cli.py`. Shared option groups live in `cli.options`, the
loading of what the user gave in `cli.inputs`.
A user's mistake prints one line and exits with code 2; nothing the user gave is overwritten.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Sequence

from poisonguard import __version__, utils
from poisonguard.errors import EXIT_FINDING, EXIT_INTERNAL, EXIT_USER_ERROR, UnsafeFileError, UserError
from poisonguard.registry import import_plugins

log = logging.getLogger("poisonguard")

CLI_MODULES = (
    "poisonguard.cli.commands",
    "poisonguard.detect.cli",
    "poisonguard.repair.cli",
    "poisonguard.certify.cli",
    "poisonguard.privacy.cli",
    "poisonguard.federated.cli",
    "poisonguard.filesafety.cli",
    "poisonguard.sanitize.cli",
    "poisonguard.sanitize.filter_cli",
    "poisonguard.audit.cli",
)


def build_parser() -> argparse.ArgumentParser:
    from poisonguard.cli.options import OneLineParser

    parser = OneLineParser(prog="poisonguard", description="Detect, remove, certify and train against backdoors and data poisoning.")
    parser.add_argument("--version", action="version", version=f"poisonguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in import_plugins(CLI_MODULES):
        module.add_commands(sub)
    return parser


# Third-party loggers that talk at INFO/WARNING about their own internals.
NOISY_LOGGERS = ("opacus", "flwr", "ray", "matplotlib", "PIL", "onnx2torch", "onnxruntime", "torch")


def quieten() -> None:
    """--quiet: no progress bars, no library warnings (torch FutureWarnings, Opacus notes ...), errors only."""
    utils.QUIET = True
    warnings.filterwarnings("ignore")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _recorded_features(args) -> tuple[str, ...] | None:
    """The encoded table columns the run's model records (its metadata.json `features`), which
    decide each column's kind when the run reads a table (`data.table._recorded_kinds`); None
    for images, text and models that record none."""
    model = getattr(args, "model", None)
    if not getattr(args, "label_column", None) or not model or not Path(model).is_file():
        return None
    from poisonguard.models.files import read_metadata

    try:
        features = read_metadata(Path(model)).get("features")
    except UserError:
        return None  # the command reports a bad metadata.json itself, in its own words
    ok = isinstance(features, list) and features and all(isinstance(f, str) for f in features)
    return tuple(features) if ok else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    utils.QUIET = getattr(args, "quiet", False)
    if utils.QUIET:
        quieten()
    logging.basicConfig(level=logging.WARNING if utils.QUIET else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        from poisonguard import limits

        limits.reset()
        limits.override(getattr(args, "limit", None))
        from poisonguard.data import options as data_options

        data_options.reset()
        data_options.set_options(label_column=getattr(args, "label_column", None),
                                 model_features=_recorded_features(args))
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"poisonguard: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except UnsafeFileError as exc:
        print(f"poisonguard: unsafe: {exc}", file=sys.stderr)
        return EXIT_FINDING
    except KeyboardInterrupt:
        print("poisonguard: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as a RuntimeError
        if isinstance(exc, RuntimeError) and not ("allocate" in str(exc) and "memory" in str(exc)):
            return _internal_error(exc)
        print(f"poisonguard: error: out of memory ({(str(exc).splitlines() or ['MemoryError'])[0][:200]}): a smaller "
              "input size, batch or --limit may help", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug of ours; Python's own exit code 1 would read as "backdoor found" in CI
        return _internal_error(exc)
    finally:
        from poisonguard import limits

        limits.reset()  # --limit applies to this run only (main() may be called again in one process)
        from poisonguard.data import options as data_options

        data_options.reset()


def _internal_error(exc: BaseException) -> int:
    import traceback

    traceback.print_exception(exc)
    print(f"poisonguard: internal error (a bug in poisonguard, not a finding; please report the traceback "
          f"above): {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
