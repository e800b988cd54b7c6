"""Feed the bad-input corpus (tests/badinputs.py) through the API, and with --cli a subset through `convlens`,
and print one summary line: tried, handled with a clear error (or accepted correctly), crashes.

Run from the repository root: `python scripts/bad_inputs.py [--cli] [--verbose] [--keep DIR]`. Exits 1 when any
entry crashed or gave an unclear message.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.badinputs import Outcome, run_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the corpus and print the summary line (failures, or every entry with --verbose, above it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli", action="store_true", help="also run the representative subset through the CLI")
    ap.add_argument("--verbose", "-v", action="store_true", help="one line per entry")
    ap.add_argument("--keep", default=None, help="build the corpus in this folder and keep it")
    ap.add_argument("--only", nargs="*", default=None, help="entry ids to run (default: all)")
    args = ap.parse_args(argv)
    # torch's loader comments on the hostile checkpoints themselves; the summary says what matters
    warnings.filterwarnings("ignore", message="(Detected pickle protocol|Validating sparse tensor)")

    def show(o: Outcome) -> None:
        if args.verbose or not o.ok:
            print(
                f"  [{o.status:7}] {o.channel} {o.case.kind:10} {o.case.id:32} {o.seconds:5.2f}s  {o.detail[:160]}"
            )

    folder = None
    if args.keep:
        folder = Path(args.keep)
        folder.mkdir(parents=True, exist_ok=True)
    report = run_corpus(folder, cli=args.cli, ids=args.only, progress=show)
    print(report.line())
    return 1 if report.crashes or report.unclear else 0


if __name__ == "__main__":
    sys.exit(main())
