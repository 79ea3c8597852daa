"""The papers' headline FLOPs-to-match numbers, as printed, with their sources (details: docs/papers.md).

The report puts them beside ours for reference: they are at 1.4B (Mixture-of-Mamba) and 7B (Mixture-of-Transformers)
parameters and hundreds of billions of tokens, not at the scales this suite trains on a CPU.
"""

from __future__ import annotations

from typing import NamedTuple


class PaperNumber(NamedTuple):
    """A published FLOPs-to-match number, as printed, with the model scale and a key into PAPER_SOURCES."""

    value: str
    scale: str
    source: str


# Keyed by (sparse arm, setting, modality).
PAPER_NUMBERS: dict[tuple[str, str, str], PaperNumber] = {
    ("mom", "transfusion", "image"): PaperNumber("34.76%", "1.4B", "M1"),
    ("mom", "chameleon", "image"): PaperNumber("42.50%", "1.4B", "M1"),
    ("mom", "chameleon", "text"): PaperNumber("65.40%", "1.4B", "M1"),
    ("mom", "three_modality", "speech"): PaperNumber("24.80%", "1.4B", "M1"),
    ("mot", "chameleon", "text"): PaperNumber("55.8%", "7B", "T1"),
    ("mot", "chameleon", "image"): PaperNumber("34.8%", "7B", "T2"),
    ("mot", "three_modality", "speech"): PaperNumber("37.2%", "7B", "T3"),
    ("mot", "transfusion", "image"): PaperNumber("~33%", "7B", "T4"),
}
PAPER_SOURCES = {
    "M1": "Mixture-of-Mamba (Liang et al., arXiv 2501.16295), abstract: training FLOPs for MoM to match dense Mamba "
    "at 1.4B; whether on training or validation loss is not stated (docs/papers.md, Mixture-of-Mamba).",
    "T1": "Mixture-of-Transformers (Liang et al., arXiv 2411.04996), abstract; 7B Chameleon setting, step matching on "
    "the dense final training loss, confirmed on validation at 55.8% of the steps (docs/papers.md, "
    "Mixture-of-Transformers).",
    "T2": "MoT Fig. 5d / 6r, 7B Chameleon setting, image training loss; via third-party summaries (docs/papers.md, "
    "Mixture-of-Transformers).",
    "T3": "MoT Fig. 8f, the worse of two speech validation sets (PPL30K; LL60K gives 31.3%); 7B per third-party "
    "summaries, 443M per the official README (docs/papers.md, Mixture-of-Transformers).",
    "T4": "MoT abstract: a 7B MoT matches the dense image quality with one third of the FLOPs (Transfusion setting); "
    "Fig. 10c / 10e give 30.9% (training) and 37.4% (validation) per third-party summaries (docs/papers.md, "
    "Mixture-of-Transformers).",
}
