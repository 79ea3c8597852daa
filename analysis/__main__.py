"""Paper-scale presets: parameters and training FLOPs per token per arm and setting, on the meta device (seconds).

Every arm is listed, the position-hash controls too (mom_hash, mot_hash: the numbers of mom and mot by design).

python -m analysis [--seq-len 4096] [--scales 163m,760m,1.4b]
"""

import argparse

from analysis.flops import flops_per_token
from datamodules.multimodal import N_MODALITIES
from models import ARCHS, ModelConfig, build_model

# The papers' vocabularies (PAPERS.md §2.3-§3.2): Transfusion's Llama-2 BPE, Chameleon's 65,536 (image codes inside).
PAPER_VOCAB = {"transfusion": 32000, "chameleon": 65536, "three_modality": 65536}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--scales", default="163m,760m,1.4b")
    args = parser.parse_args()
    print(f"| setting | scale | arm | total params | active params | train GFLOPs/token (L={args.seq_len}) |")
    print("|---|---|---|---|---|---|")
    for setting, vocab in PAPER_VOCAB.items():
        for scale in args.scales.split(","):
            for arch in ARCHS:
                cfg = ModelConfig.from_scale(scale, arch=arch, vocab_size=vocab, n_modalities=N_MODALITIES[setting])
                total, active = build_model(cfg, device="meta").param_count()
                gflops = flops_per_token(cfg, args.seq_len) / 1e9
                print(f"| {setting} | {scale} | {arch} | {total / 1e6:,.1f}M | {active / 1e6:,.1f}M | {gflops:.2f} |")


if __name__ == "__main__":
    main()
