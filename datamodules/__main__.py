"""Prepare the data of the chosen settings, print each dataset card and the tokens per modality.

python -m datamodules [--settings all] [--seq-len 256] [--cache-dir .cache/data] [--data own_data=FOLDER ...]
"""

import argparse
import sys
import time
import typing

from common.cli import parse_overrides
from datamodules.errors import DATA_ERRORS
from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import SETTINGS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--cache-dir", default=".cache/data")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a MultiModalDataModule argument, e.g. own_data=path/to/folder or batch_size=4 (repeatable)",
    )
    args = parser.parse_args(argv)
    chosen = tuple(SETTINGS) if args.settings == "all" else tuple(s.strip() for s in args.settings.split(","))
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; valid choices are 'all' or {list(SETTINGS)}")
    hints = typing.get_type_hints(MultiModalDataModule.__init__)
    valid = {k: v for k, v in hints.items() if k not in ("return", "setting", "seq_len", "cache_dir")}
    try:
        data = parse_overrides(args.data, "--data", valid)
        modules = {
            s: MultiModalDataModule(setting=s, seq_len=args.seq_len, cache_dir=args.cache_dir, **data) for s in chosen
        }
    except ValueError as exc:
        parser.error(str(exc))
    for setting, dm in modules.items():
        start = time.perf_counter()
        try:
            dm.prepare_data()
            dm.setup("fit")
        except DATA_ERRORS as exc:
            parser.error(str(exc))
        print(f"\n{setting}: vocabulary {dm.vocab_size} ({dm.vocab}), ready in {time.perf_counter() - start:.1f} s")
        print(f"  {'set':<16} {'sequences':>9} {'text':>10} {'image':>10} {'speech':>10}")
        for name, s in dm.stats().items():
            print(f"  {name:<16} {s['sequences']:>9} {s['text']:>10,} {s['image']:>10,} {s['speech']:>10,}")


if __name__ == "__main__":
    sys.exit(main())
