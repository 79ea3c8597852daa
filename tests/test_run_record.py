"""The run record: metric names and their inverse, and a summary.json that round-trips or fails naming the file."""

import json

import pytest

from analysis.run_record import (
    SCHEMA_VERSION,
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
