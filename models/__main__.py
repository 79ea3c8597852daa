"""Print the named scales: parameters per arm, counted on the meta device (no memory, seconds on a CPU).

The position-hash controls (mom_hash, mot_hash) are listed too: the same numbers as mom and mot, routed by position.

python -m models [--vocab-size 32000] [--modalities 2] [--scales tiny,small,163m,760m,1.4b]
"""

import argparse

from models.arms import ARMS
from models.config import ModelConfig
from models.family import SCALES
from models.lm import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=None, help="override every scale's default vocabulary")
    parser.add_argument("--modalities", type=int, default=2)
    parser.add_argument("--scales", default=",".join(SCALES))
    args = parser.parse_args()
    overrides = {"n_modalities": args.modalities}
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    header = "| scale | arch | routing | d_model | blocks | vocab | total params | active params |"
    print(f"{header}  (M = {args.modalities})")
    print("|---|---|---|---|---|---|---|---|")
    for scale in args.scales.split(","):
        for arch in ARMS:
            cfg = ModelConfig.from_scale(scale, arch=arch, **overrides)
            total, active = build_model(cfg, device="meta").param_count()
            print(
                f"| {scale} | {arch} | {cfg.routing} | {cfg.d_model} | {cfg.n_block} | {cfg.vocab_size} "
                f"| {total / 1e6:,.1f}M | {active / 1e6:,.1f}M |"
            )


if __name__ == "__main__":
    main()
