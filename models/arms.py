"""The arm registry: every architecture the suite compares, defined once and read by everything else.

An arm is a family (Mamba or transformer) plus how its sparse parts pick an expert:

    mamba, transformer      dense: one copy of everything
    mom, mot                Mixture-of-Mamba / Mixture-of-Transformers: the decoupled parts have one copy per
                            modality and each token uses its modality's copy
    mom_hash, mot_hash      controls: mom / mot's experts, parameters and FLOPs, but each token's expert is a fixed
                            hash of its position, blind to modality (do extra parameters alone explain the gain?)
    mom_idhash, mot_idhash  stronger controls: a fixed expert per token id (Hash Layers, Roller et al. 2021), balanced
                            on the training data; every expert sees every modality, routed by content
    mamba_twin,             null (A/A) controls: the dense arm itself, with other initial weights, compared with the
    transformer_twin        dense arm like a sparse arm is: what "significant" means when nothing differs

The model config, model building, FLOPs, the comparison's plan and the report's labels, colours and column order all
read `ARMS`. Each family's module registers its own arms (models/mamba.py, models/transformer.py); a new arm is one
`register_arm(Arm(...))` call (a test registers one and trains it end to end).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.family import Family

# What picks a token's expert in every sparse part: nothing (dense arms), the token's modality, a fixed hash of its
# position in the sequence, or a fixed expert per token id balanced on the training data (models/lm.py).
ROUTINGS = ("none", "modality", "position_hash", "token_hash")


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison.

    Attributes:
        name: the arm's name on the command line and in run folders.
        family: its Family (block, parts, sizes, parameter count, FLOPs).
        label: its name in tables and figures.
        colour: its matplotlib colour in every figure.
        dense: the dense arm this arm is compared with (same family): a sparse arm's, or a twin's; None for a dense
            arm that is itself a baseline.
        routing: one of ROUTINGS; "none" exactly for dense arms (baselines and twins).
        decouple: the parts a sparse arm decouples by default; None means all of the family's parts.
        default: trained by a comparison that does not name its arms.
        config: ModelConfig fields this arm sets unless the config sets them itself (a named variant of a block,
            e.g. the pre-norm transformer).
    Arms are shown in registration order.
    """

    name: str
    family: Family
    label: str
    colour: str
    dense: str | None = None
    routing: str = "none"
    decouple: tuple[str, ...] | None = None
    default: bool = False
    config: dict = field(default_factory=dict)

    @property
    def is_sparse(self) -> bool:
        return self.routing != "none"

    @property
    def is_twin(self) -> bool:
        """A dense arm compared with a dense arm of its family: the null control."""
        return self.dense is not None and not self.is_sparse

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts this arm decouples when nothing else is asked for (none for a dense arm)."""
        if not self.is_sparse:
            return ()
        return self.family.parts if self.decouple is None else self.decouple


ARMS: dict[str, Arm] = {}


def register_arm(arm: Arm) -> Arm:
    """Add `arm` to the registry after checking it against the arms already there."""
    problems = []
    if arm.name in ARMS:
        problems.append(f"an arm named {arm.name!r} is registered already")
    if arm.routing not in ROUTINGS:
        problems.append(f"routing {arm.routing!r} is not one of {list(ROUTINGS)}")
    if arm.dense is not None:
        partner = ARMS.get(arm.dense)
        if partner is None or partner.dense is not None or partner.is_sparse or partner.family is not arm.family:
            problems.append(f"dense partner {arm.dense!r} is not a registered dense {arm.family.name} baseline")
    elif arm.is_sparse:
        problems.append("a sparse arm needs a dense partner")
    if not arm.is_sparse and arm.decouple:
        problems.append("a dense arm (routing 'none') decouples nothing")
    unknown = sorted(set(arm.decouple or ()) - set(arm.family.parts))
    if unknown:
        problems.append(f"unknown {arm.family.name} parts {unknown}; valid are {list(arm.family.parts)}")
    if problems:
        raise ValueError(f"cannot register arm {arm.name!r}: {'; '.join(problems)}")
    ARMS[arm.name] = arm
    return arm


def get_arm(name: str) -> Arm:
    """The registered arm `name`; ValueError listing the valid names otherwise."""
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; valid choices are {list(ARMS)}")
    return ARMS[name]


def sparse_arms(family: Family, routing: str = "modality") -> list[str]:
    """Names of the registered sparse arms of `family` that route by `routing`."""
    return [a.name for a in ARMS.values() if a.family is family and a.routing == routing]


# The twins draw their initial weights from the run's seed + TWIN_SEED_OFFSET (models/lm.py) and train on the same
# batches as the dense run of their seed. The offset is far from any seed a comparison uses, so no twin starts from
# the weights of a dense run of another seed.
TWIN_SEED_OFFSET = 10_000
