"""A researcher's own corpus (`own_data=<folder>`): every bad document, and data too small for what a run asks of them,
fail before anything is written as one line naming documents.jsonl (with the line of a bad document) and what is
wrong, from compare.py, train.py and `python -m datamodules` alike."""

import json
import re

import numpy as np
import pytest

from datamodules.__main__ import main as datamodules_main
from datamodules.errors import DataMismatch
from datamodules.multimodal import MultiModalDataModule
from datamodules.own import load_own_data
from experiments import compare, train

# Small fits: a 300-token BPE, 16 codes per image source and 8 speech units fit the tiny corpora below.
FITS = {"text_vocab_size": 300, "image_codebook": 16, "speech_units": 8, "seq_len": 64, "batch_size": 2}
BAD_LINE = 3  # every bad document replaces this line of a good corpus


def corpus(folder, n_text=12, n_images=24, n_audio=4, image_shape=(8, 8), audio_samples=4000, bad=None):
    """documents.jsonl of texts, then captioned images (img/<i>.npy), then utterances (wav/<i>.npy, 16 kHz); the
    first of each kind is marked for validation, the rest for training. `bad` (a document, or a raw line) replaces
    line BAD_LINE."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(exist_ok=True)
    split = lambda i: "val" if i == 0 else "train"  # noqa: E731
    docs = [{"text": f"passage {i} about gardens, weather and tea.", "split": split(i)} for i in range(n_text)]
    for i in range(n_images):
        np.save(folder / "img" / f"{i}.npy", (rng.random(image_shape) * 255).astype(np.uint8))
        docs.append({"text": f"a square number {i}", "image": f"img/{i}.npy", "split": split(i)})
    for i in range(n_audio):
        np.save(folder / "wav" / f"{i}.npy", (0.3 * rng.standard_normal(audio_samples)).astype(np.float32))
        docs.append({"text": f"noise {i}", "audio": f"wav/{i}.npy", "sample_rate": 16000, "split": split(i)})
    if bad is not None:
        docs[BAD_LINE - 1] = bad
    lines = [d if isinstance(d, str) else json.dumps(d) for d in docs]
    (folder / "documents.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def cli_call(cli, tmp_path, folder, setting="chameleon", **data):
    """(argv, main) of one entry point on own data `folder`, writing under tmp_path's runs/, results/ and cache/."""
    root, out, cache = tmp_path / "runs", tmp_path / "results", tmp_path / "cache"
    data = {"own_data": str(folder), **FITS, **data}
    if cli == "compare":
        argv = ["--settings", setting, "--arms", "mamba", "--max-steps", "2", "--val-every", "2", "--seeds", "1",
                "--no-samples", "--root", str(root), "--out", str(out), "--data-cache", str(cache),
                *(f"--data={k}={v}" for k, v in data.items())]  # fmt: skip
        call = compare.main
    elif cli == "train":
        argv = ["--setting", setting, "--arm", "mamba", "--max_steps", "2", "--val_every", "2", "--root", str(root),
                f"--data.cache_dir={cache}", *(f"--data.{k}={v}" for k, v in data.items())]  # fmt: skip
        call = train.main
    else:
        seq_len = data.pop("seq_len")
        argv = ["--settings", setting, "--seq-len", str(seq_len), "--cache-dir", str(cache),
                *(f"--data={k}={v}" for k, v in data.items())]  # fmt: skip
        call = datamodules_main
    return argv, call


def fails(capsys, tmp_path, cli, folder, setting="chameleon", **data):
    """The one error line an entry point ends in; checks the exit code, no traceback and nothing written."""
    argv, call = cli_call(cli, tmp_path, folder, setting, **data)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        call(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    assert not list((tmp_path / "cache").glob(".tmp-*")), "a half-built cache folder was left"
    return errors[0].split("error: ", 1)[1]


# Array files a document may name: case -> (key, array, what the message says after "<key> <path>: ").
ARRAYS = {
    "pickled": (
        "image",
        np.array([{"a": 1}], dtype=object),
        "not a numeric .npy array (Object arrays cannot be loaded when allow_pickle=False)",
    ),
    "nan_audio": ("audio", np.array([0.1, np.nan, 0.2] * 100, np.float32), "holds NaN or inf in 100 of its 300 values"),
    "inf_image": ("image", np.where(np.eye(8) > 0, np.inf, 0.5), "holds NaN or inf in 8 of its 64 values"),
    "empty_audio": ("audio", np.zeros(0, np.float32), "empty (shape (0,))"),
    "empty_image": ("image", np.zeros((0, 8), np.uint8), "empty (shape (0, 8))"),
    "complex_image": (
        "image",
        np.ones((8, 8), np.complex64),
        "dtype complex64; an image is uint8 (0..255) or float in [0, 1]",
    ),
    "bool_image": ("image", np.ones((8, 8), bool), "dtype bool; an image is uint8 (0..255) or float in [0, 1]"),
    "wide_int_image": (
        "image",
        np.full((8, 8), 4095, np.uint16),
        "integer images hold 8-bit pixels (0..255), got 4095..4095",
    ),
    "bright_float_image": ("image", np.full((8, 8), 2.0, np.float32), "float images must lie in [0, 1], got 2.0..2.0"),
    "rgba_image": (
        "image",
        np.zeros((8, 8, 4), np.uint8),
        "shape (8, 8, 4); an image is (H, W) or (H, W, C) with C = 1 (grey) or 3 (RGB)",
    ),
    "string_audio": ("audio", np.array(["a", "b"]), "dtype <U1; audio is a float waveform in [-1, 1]"),
    "int16_audio": (
        "audio",
        np.zeros(4000, np.int16),
        "dtype int16; audio is a float waveform in [-1, 1] (int16 PCM: divide by 32768)",
    ),
    "stereo_audio": ("audio", np.zeros((4000, 2), np.float32), "shape (4000, 2); audio is a 1-D mono waveform (S,)"),
}
# Documents that are wrong themselves: case -> (the line, what the message says after "documents.jsonl:3: ");
# {missing}, {text} and {short} are the paths of those files in the corpus folder; wav/1.npy is a good waveform.
RECORDS = {
    "cut_line": (
        '{"text": "a line cut sh',
        "not valid JSON (Unterminated string starting at: column 10); each line is one JSON object",
    ),
    "not_an_object": ('["text", "a list"]', 'a document is a JSON object ({{"text": ...}}), got list'),
    "no_text": ({"image": "img/0.npy"}, "every document needs a 'text' string, got None"),
    "missing_npy": ({"text": "x", "image": "img/missing.npy"}, "image {missing}: no such file"),
    "not_npy": (
        {"text": "x", "image": "text.npy"},
        "image {text}: not a .npy file (write it with numpy.save)",
    ),
    "cut_npy": ({"text": "x", "image": "short.npy"}, "image {short}: not a numeric .npy array (Failed"),
    "no_sample_rate": (
        {"text": "x", "audio": "wav/1.npy"},
        "'sample_rate' must be a positive integer (samples per second), got None",
    ),
    "fractional_rate": (
        {"text": "x", "audio": "wav/1.npy", "sample_rate": 16000.5},
        "'sample_rate' must be a positive integer (samples per second), got 16000.5",
    ),
    "image_and_audio": (
        {"text": "x", "image": "img/0.npy", "audio": "wav/1.npy", "sample_rate": 16000},
        "a document holds an 'image' or an 'audio', not both",
    ),
    "bad_split": ({"text": "x", "split": "test"}, "split must be 'train' or 'val', got 'test'"),
}


def bad_corpus(folder, case):
    """A good corpus whose line BAD_LINE is the bad document of `case`; returns (it, the message's expected start)."""
    folder.mkdir(parents=True)
    if case in ARRAYS:
        key, array, said = ARRAYS[case]
        np.save(folder / f"{case}.npy", array, allow_pickle=True)
        doc = {"text": case, key: f"{case}.npy"} | ({"sample_rate": 16000} if key == "audio" else {})
        said = f"{key} {folder / f'{case}.npy'}: {said}"
    else:
        (folder / "text.npy").write_text("a text file, not an array")
        np.save(folder / "short.npy", np.zeros((8, 8), np.uint8))
        (folder / "short.npy").write_bytes((folder / "short.npy").read_bytes()[:-10])
        doc, said = RECORDS[case]
        said = said.format(missing=folder / "img" / "missing.npy", text=folder / "text.npy", short=folder / "short.npy")
    corpus(folder, bad=doc)
    return folder, f"{folder / 'documents.jsonl'}:{BAD_LINE}: {said}"


@pytest.mark.parametrize("case", [*ARRAYS, *RECORDS])
def test_a_bad_document_is_named_by_file_and_line_before_anything_is_written(tmp_path, capsys, case):
    """Each way a document can be unreadable fails compare.py with `<folder>/documents.jsonl:3: <what>`: no
    traceback, no comparison.json, no run folder, no cache entry."""
    folder, expected = bad_corpus(tmp_path / "own", case)
    message = fails(capsys, tmp_path, "compare", folder)
    assert message.startswith(expected), (message, expected)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


@pytest.mark.parametrize("cli", ["train", "datamodules"])
@pytest.mark.parametrize("case", ["cut_line", "missing_npy", "nan_audio", "pickled"])
def test_train_and_python_m_datamodules_name_the_bad_document_too(tmp_path, capsys, cli, case):
    folder, expected = bad_corpus(tmp_path / "own", case)
    assert fails(capsys, tmp_path, cli, folder).startswith(expected)


def _index(folder) -> str:
    return str(folder / "documents.jsonl")


@pytest.mark.parametrize("cli", ["compare", "train", "datamodules"])
def test_too_little_for_one_batch_says_how_many_sequences_and_which_argument(tmp_path, capsys, cli):
    """A batch needs batch_size training sequences: the message gives the count the corpus fills, and that count as
    batch_size prepares."""
    folder = corpus(tmp_path / "own", n_text=4, n_images=0, n_audio=0)
    message = fails(capsys, tmp_path, cli, folder, batch_size=8)
    found = re.fullmatch(
        rf"chameleon/train: own data {re.escape(_index(folder))} fills (\d) of the 8 sequences of seq_len=64 that "
        r"train needs \(batch_size=8 to train, 1 to validate\): lower batch_size \(to at most \1\) or seq_len "
        r"\(shorter sequences are more\), or add documents",
        message,
    )
    assert found, message
    enough = {**FITS, "batch_size": int(found.group(1)), "cache_dir": str(tmp_path / "cache")}
    dm = MultiModalDataModule(setting="chameleon", own_data=str(folder), **enough)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == dm.batch_size


@pytest.mark.parametrize("cli", ["compare", "train", "datamodules"])
def test_too_little_speech_for_the_units_says_how_many_frames(tmp_path, capsys, cli):
    """The unit k-means needs a frame (10 ms, over a 25 ms window) per unit: one training utterance of 4,000 samples
    at 16 kHz gives 1 + (4000 - 400) // 160 = 23, short of 64; 10,480 samples give 64 and prepare."""
    folder = corpus(tmp_path / "own", n_audio=2, audio_samples=4000)
    message = fails(capsys, tmp_path, cli, folder, setting="three_modality", speech_units=64)
    assert message == (
        f"own data {_index(folder)}: 64 speech units need at least 64 frames of training speech (a frame per 10 ms: "
        "0.66 s in one utterance); the training speech gives 23 (0.25 s in 1 utterance): add speech or lower "
        "speech_units to at most 23"
    )
    own = {**FITS, "speech_units": 64, "cache_dir": str(tmp_path / "cache"), "own_data": str(folder)}
    for samples, frames in ((10_479, 63), (10_480, 64)):
        np.save(folder / "wav" / "1.npy", (0.3 * np.random.default_rng(1).standard_normal(samples)).astype(np.float32))
        dm = MultiModalDataModule(setting="three_modality", **own)
        if frames < 64:
            with pytest.raises(DataMismatch, match=f"gives {frames} "):
                dm.prepare_data()
        else:
            dm.prepare_data()


def test_too_few_patches_for_the_image_codebook_say_how_many(tmp_path, capsys):
    folder = corpus(tmp_path / "own", n_images=6)
    assert fails(capsys, tmp_path, "compare", folder, image_codebook=64) == (
        f"own data {_index(folder)}: a codebook of 64 entries needs at least 64 training patches; the 5 training "
        "images of 8x8x1 give 20 (4 each at patch 4): add images or lower image_codebook to at most 20"
    )


def test_images_the_patch_does_not_tile_are_named(tmp_path, capsys):
    folder = corpus(tmp_path / "own", image_shape=(10, 10))
    assert fails(capsys, tmp_path, "compare", folder) == (
        f"own data {_index(folder)}: image size 10×10 is not divisible by patch size 4: choose an image_patch that "
        "divides both sides"
    )


def test_a_speech_setting_without_audio_documents_is_named(tmp_path, capsys):
    folder = corpus(tmp_path / "own", n_audio=0)
    assert fails(capsys, tmp_path, "train", folder, setting="three_modality") == (
        f'setting three_modality needs speech, and own data {_index(folder)} has none (add documents with "audio", '
        "or choose a setting without speech)"
    )


def test_a_good_small_corpus_prepares_through_python_m_datamodules(tmp_path, capsys):
    folder = corpus(tmp_path / "own")
    data = [f"--data={k}={v}" for k, v in {**FITS, "own_data": folder}.items() if k != "seq_len"]
    datamodules_main(["--settings", "three_modality", "--seq-len", "64", "--cache-dir", str(tmp_path / "cache"), *data])
    out = capsys.readouterr()
    assert "three_modality: vocabulary" in out.out and "error" not in out.err


def test_accepted_arrays_and_lines(tmp_path):
    """Integer images of any integer type holding 0..255 are 8-bit pixels, float16 and RGB images and float64 audio
    load, and Windows line ends and a byte-order mark are read as the JSON they hold."""
    folder = corpus(tmp_path / "own", n_images=4)
    pixels = np.arange(64).reshape(8, 8) * 4
    np.save(folder / "img" / "1.npy", pixels.astype(np.int64))
    np.save(folder / "img" / "2.npy", (pixels / 255).astype(np.float16))
    np.save(folder / "img" / "rgb.npy", np.zeros((8, 8, 3), np.uint8))
    np.save(folder / "wav" / "1.npy", np.zeros(4000, np.float64))
    lines = (folder / "documents.jsonl").read_text().splitlines()
    lines += ['{"text": "rgb", "image": "img/rgb.npy", "split": "train"}', '{"text": "rgb", "image": "img/rgb.npy"}']
    (folder / "documents.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    own = load_own_data(folder)
    grey, rgb = own.images
    assert grey.images.shape == (4, 8, 8, 1) and rgb.images.shape == (2, 8, 8, 3)
    assert np.array_equal(grey.images[1, ..., 0], (pixels / 255).astype(np.float32))
    assert np.allclose(grey.images[2, ..., 0], pixels / 255, atol=1e-3)
    assert own.speech_train[0].audio.dtype == np.float32 and len(own.text.train) + len(own.text.val) == 12
