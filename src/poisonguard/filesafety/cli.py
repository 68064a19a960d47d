"""`poisonguard inspect-file FILE... [--out DIR]`: static file safety, nothing loaded or run.

Prints one JSON object on stdout (`{"files": [...], "unsafe": N}`, each file as
`FileSafety.to_dict()`); with `--out`, the same object goes to `DIR/report.json`. Exit 1 when
any file is unsafe (a finding, as for a backdoor found; `--exit-zero` makes it 0), 0 when all are
safe, 2 for a missing file.
"""

from __future__ import annotations

import json
import logging
import sys

from poisonguard.errors import EXIT_FINDING, EXIT_OK

log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = sub.add_parser("inspect-file", help="is this model file safe to load? static checks by format, nothing is loaded or run")
    p.add_argument("files", nargs="+", metavar="FILE", help="model or data files (format recognised by their bytes)")
    p.add_argument("--out", default=None, help="also write the result to OUT/report.json")
    p.add_argument("--force", action="store_true", help="write into an --out that holds other outputs (they are removed first)")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even when a file is unsafe (the JSON still says so)")
    p.add_argument("--quiet", action="store_true", help="no log lines")
    p.set_defaults(func=cmd_inspect_file)


def cmd_inspect_file(args) -> int:
    from poisonguard import __version__
    from poisonguard.cli.inputs import file_inputs, guard_out
    from poisonguard.filesafety import inspect_file
    from poisonguard.utils import atomic_write_text

    out = None
    if args.out is not None:  # claimed before any work; never an input's folder (cli.inputs.guard_out)
        out = guard_out(args.out, command="inspect-file", force=args.force,
                        inputs=file_inputs(*(("file", f) for f in args.files)))
    results = [inspect_file(path).to_dict() for path in args.files]
    unsafe = sum(r["file_safety"] == "unsafe" for r in results)
    for result in results:
        if result["file_safety"] == "unsafe":
            log.info("unsafe: %s (%s): %s", result["path"], result["format"], "; ".join(result["file_findings"][:3]))
    report = {"tool": "poisonguard", "version": __version__, "command": "inspect-file", "files": results, "unsafe": unsafe}
    text = json.dumps(report, indent=2)
    if out is not None:
        atomic_write_text(out / "report.json", text)
    sys.stdout.write(text + "\n")
    return EXIT_FINDING if unsafe and not args.exit_zero else EXIT_OK
