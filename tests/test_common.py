"""The shared helpers: an atomic write leaves the old file or the new one (never part of one, never a temporary
file), also when the writer fails or the disk is full; the stable split is a fixed, uniform function of the key."""

import errno
import subprocess
import sys

import pytest

from common.cli import respell_flags
from common.files import atomic_write, write_json
from common.hashing import stable_fraction


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    atomic_write(path, lambda tmp: tmp.write_text("third"))
    assert path.read_text() == "third" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]
    write_json(tmp_path / "b.json", {"x": (1, 2)})
    assert (tmp_path / "b.json").read_text() == '{\n "x": [\n  1,\n  2\n ]\n}'


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    """A writer that dies half way (a full disk, Ctrl-C) changes nothing a reader can see."""
    path = tmp_path / "summary.json"
    atomic_write(path, "old")

    def half_then_fail(tmp):
        tmp.write_text("half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_stable_fraction_is_blake2b_uniform_and_the_same_in_another_process():
    assert stable_fraction("hello") == stable_fraction(b"hello") == 0.6551350150274587  # blake2b-64 / 2^64
    values = [stable_fraction(f"document {i}") for i in range(20_000)]
    assert all(0 <= v < 1 for v in values)
    assert abs(sum(v < 0.1 for v in values) / len(values) - 0.1) < 0.01
    code = "from common.hashing import stable_fraction; print(repr(stable_fraction('document 7')))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert float(other) == values[7]  # Python's own hash() would differ between processes


def test_respell_flags_changes_option_names_only():
    argv = ["--max-steps", "3", "--data.seq-len=64", "--model", "d_model=256", "--x_y=a_b-c", "--", "--keep-me"]
    assert respell_flags(argv, "_") == [
        "--max_steps", "3", "--data.seq_len=64", "--model", "d_model=256", "--x_y=a_b-c", "--", "--keep-me"
    ]  # fmt: skip
    assert respell_flags(["--max_steps", "3", "--data_cache=a_b"], "-") == ["--max-steps", "3", "--data-cache=a_b"]
