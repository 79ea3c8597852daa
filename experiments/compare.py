"""Entry point of the suite: train every arm in every setting and write the FLOPs-to-match report.

    python experiments/compare.py --settings all

Not implemented yet: the datamodules, training loop and report land with issues #3-#5. Today the project provides
the four architectures (`models/`), their tests and benchmarks.
"""

import argparse
import sys

from datamodules.multimodal import SETTINGS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)}")
    args = parser.parse_args(argv)
    chosen = SETTINGS if args.settings == "all" else tuple(s.strip() for s in args.settings.split(","))
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; valid choices are 'all' or {list(SETTINGS)}")
    print(
        "compare.py: not implemented yet - the comparison (datamodules, training, report) lands with issues #3-#5.\n"
        "What exists today: the four architectures in models/ (see README), `pytest` and benchmarks/.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
