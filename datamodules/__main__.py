"""Prepare the data of the chosen settings, print each dataset card and the tokens per modality.

python -m datamodules [--settings all] [--seq-len 256] [--cache-dir .cache/data]
"""

import argparse
import time

from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import SETTINGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--cache-dir", default=".cache/data")
    args = parser.parse_args()
    chosen = tuple(SETTINGS) if args.settings == "all" else tuple(s.strip() for s in args.settings.split(","))
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; valid choices are 'all' or {list(SETTINGS)}")
    for setting in chosen:
        start = time.perf_counter()
        dm = MultiModalDataModule(setting=setting, seq_len=args.seq_len, cache_dir=args.cache_dir)
        dm.prepare_data()
        dm.setup("fit")
        print(f"\n{setting}: vocabulary {dm.vocab_size} ({dm.vocab}), ready in {time.perf_counter() - start:.1f} s")
        print(f"  {'set':<16} {'sequences':>9} {'text':>10} {'image':>10} {'speech':>10}")
        for name, s in dm.stats().items():
            print(f"  {name:<16} {s['sequences']:>9} {s['text']:>10,} {s['image']:>10,} {s['speech']:>10,}")


if __name__ == "__main__":
    main()
