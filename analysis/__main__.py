"""Paper-scale presets: parameters and training FLOPs per token per arm and setting, on the meta device (seconds).

Every arm is listed, the position-hash controls too (mom_hash, mot_hash: the numbers of mom and mot by design).
Each setting uses the papers' vocabulary (docs/papers.md): 32,000 for Transfusion, 65,536 for the discrete settings.

python -m analysis [--seq-len 4096] [--scales 163m,760m,1.4b]
"""

import argparse

from analysis.flops import flops_per_token
from datamodules.settings import SETTINGS
from models import ARMS, ModelConfig, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--scales", default="163m,760m,1.4b")
    args = parser.parse_args()
    print(f"| setting | scale | arm | total params | active params | train GFLOPs/token (L={args.seq_len}) |")
    print("|---|---|---|---|---|---|")
    for setting in SETTINGS.values():
        for scale in args.scales.split(","):
            for arch in ARMS:
                cfg = ModelConfig.from_scale(
                    scale, arch=arch, vocab_size=setting.paper_vocab, n_modalities=setting.n_modalities
                )
                total, active = build_model(cfg, device="meta").param_count()
                gflops = flops_per_token(cfg, args.seq_len) / 1e9
                print(
                    f"| {setting.name} | {scale} | {arch} | {total / 1e6:,.1f}M | {active / 1e6:,.1f}M | {gflops:.2f} |"
                )


if __name__ == "__main__":
    main()
