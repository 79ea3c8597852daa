"""The run record: metric names and their inverse, and a summary.json that round-trips or fails naming the file."""

import json

import pytest

from analysis.run_record import (
    SCHEMA_VERSION,
    ComparisonMeta,
    LossKey,
    RunRecordError,
    Summary,
    loss_name,
    parse_loss_name,
    read_summary,
    write_summary,
)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (LossKey("train", "", "text"), "train/loss_text"),
        (LossKey("val", "val", "image"), "val/loss_image"),
        (LossKey("val", "val_real_speech", "speech"), "val_real_speech/loss_speech"),
    ],
)
def test_loss_names_and_their_inverse(key, name):
    assert loss_name(key) == name and parse_loss_name(name) == key


@pytest.mark.parametrize("column", ["train/loss", "flops", "tokens/text", "time/wall_s", "/loss_text", "val/loss_"])
def test_other_columns_are_not_losses(column):
    assert parse_loss_name(column) is None


def test_summary_round_trips(tmp_path):
    summary = Summary(
        "chameleon", "mom", "mom-in_proj", "tiny", 3, status="finished", final_val_loss={"val/loss_x": 1.5}
    )
    write_summary(tmp_path, summary)
    assert read_summary(tmp_path) == summary and json.loads((tmp_path / "summary.json").read_text())["schema_version"]
    assert read_summary(tmp_path / "nowhere") is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"schema_version": SCHEMA_VERSION + 1}, r"schema version 2, but this suite reads version 1"),
        ({"seed": "0"}, r"wrong type \['seed'\]"),
        ({"reason": 3}, r"wrong type \['reason'\]"),
        ({"steps": True}, r"wrong type \['steps'\]"),
        ({"colour": "red"}, r"unknown fields \['colour'\]"),
        ({"status": "done"}, r"status 'done' is not one of"),
    ],
)
def test_a_summary_that_does_not_fit_names_the_file(tmp_path, change, match):
    data = {**Summary("chameleon", "mom", "mom", "tiny", 0).to_dict(), **change}
    (tmp_path / "summary.json").write_text(json.dumps(data))
    with pytest.raises(RunRecordError, match=match) as exc:
        read_summary(tmp_path)
    assert str(tmp_path / "summary.json") in str(exc.value)


def test_a_record_written_before_schema_versions_reads_as_version_1(tmp_path):
    """Run folders of earlier versions of the suite (no schema_version, the variant called "name") stay usable."""
    old = Summary("chameleon", "mom", "mom-dt_proj", "tiny", 0).to_dict()
    old["name"] = old.pop("variant")
    del old["schema_version"]
    (tmp_path / "summary.json").write_text(json.dumps(old))
    assert read_summary(tmp_path).variant == "mom-dt_proj"
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(RunRecordError, match="expected a JSON object"):
        read_summary(tmp_path)


def test_comparison_meta_round_trips_and_fills_what_a_file_lacks():
    """What compare.py writes reads back equal; keys a file lacks (or holds as null) take one default, defined once;
    keys the record does not name survive a round trip."""
    written = {"scale": "tiny", "seeds": [0, 1], "max_steps": 200, "settings": ["chameleon"], "arms": ["mom"],
               "ablation": None, "ablation_setting": None, "ablation_arm": None, "recipe": {"val_every": 20},
               "command": "python experiments/compare.py", "versions": {"torch": "x"}, "parallel": 2}  # fmt: skip
    meta = ComparisonMeta.from_json(written)
    assert meta.seeds == (0, 1) and meta.val_every == 20 and meta.ablation_arm == "mom" and meta.wall_clock_s is None
    assert meta.other == {"parallel": 2}
    assert ComparisonMeta.from_json(meta.as_json()) == meta
    assert ComparisonMeta.from_json({}) == ComparisonMeta() and ComparisonMeta().scale == "?"
