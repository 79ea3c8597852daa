"""MultiModalDataModule on the real default sources: build, batch contract, determinism, splits, bad input, own data."""

import json
import multiprocessing
import os
import socket
import time
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from datamodules import cache, multimodal
from datamodules.errors import SourceUnavailable
from datamodules.multimodal import MultiModalDataModule
from datamodules.sequences import cosine_alpha_bar
from datamodules.settings import SETTINGS
from datamodules.vocab import BOA, BOI, EOA, EOI, IGNORE, PAD, PATCH
from tests.helpers import SMALL_DATA

# Small enough to build in seconds, real sources all the same.


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


@contextmanager
def no_network():
    """Any socket connection attempted inside fails."""
    original = socket.socket.connect

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during data preparation")

    socket.socket.connect = refuse
    try:
        yield
    finally:
        socket.socket.connect = original


@pytest.fixture(scope="module")
def modules(cache_dir):
    """One set-up datamodule per setting, built with the network unavailable; prints the build time."""
    out = {}
    with no_network():
        for setting in SETTINGS:
            start = time.perf_counter()
            dm = MultiModalDataModule(setting=setting, cache_dir=cache_dir, **SMALL_DATA)
            dm.prepare_data()
            dm.setup("fit")
            print(f"{setting}: prepared and set up in {time.perf_counter() - start:.1f} s; {dm.stats()}")
            out[setting] = dm
    return out


def test_default_cache_builds_offline(tmp_path, capsys):
    """The default three-modality corpus (every default source) builds with no network; the card is printed."""
    start = time.perf_counter()
    with no_network():
        dm = MultiModalDataModule(setting="three_modality", cache_dir=str(tmp_path))
        dm.prepare_data()
        dm.setup("fit")
    elapsed = time.perf_counter() - start
    card = capsys.readouterr().out
    with capsys.disabled():
        print(f"\ndefault three_modality cache built in {elapsed:.1f} s\n{card}")
    assert "Dataset card" in card and "janeaustenr" in card and "Asterisk" in card
    assert len(dm.train_set) > 5000


def first_batch(dm, loader: str = "train"):
    loaders = dm.train_dataloader() if loader == "train" else dm.val_dataloader()[0]
    return next(iter(loaders))


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_batch_contract(modules, setting):
    """Shapes and dtypes; modality ids read off the vocabulary; targets are the next tokens; markers balanced."""
    dm = modules[setting]
    b = first_batch(dm)
    B, L = SMALL_DATA["batch_size"], SMALL_DATA["seq_len"]
    for key in ("tokens", "modality_ids", "targets", "target_modality"):
        assert b[key].shape == (B, L) and b[key].dtype == torch.int64, key
    tokens = b["tokens"]
    assert int(tokens.max()) < dm.vocab_size and int(tokens.min()) >= 0
    assert torch.equal(b["modality_ids"], dm.vocab.modality_of(tokens))
    assert int(b["modality_ids"].max()) < dm.n_modalities
    nxt, tgt = tokens[:, 1:], b["targets"][:, :-1]
    real = (nxt != PAD) & (nxt != PATCH)
    assert torch.equal(tgt[real], nxt[real]) and (tgt[~real] == IGNORE).all()
    assert ((b["target_modality"] == -1) == (b["targets"] == IGNORE)).all()
    for row in dm.train_set.packed.ids:  # no image or utterance is split across sequences
        for open_id, close_id in ((BOI, EOI), (BOA, EOA)):
            opens, closes = np.flatnonzero(row == open_id), np.flatnonzero(row == close_id)
            assert len(opens) == len(closes) and (opens < closes).all()
    assert set(np.unique(dm.vocab.modality_of(dm.train_set.packed.ids))) == set(range(dm.n_modalities))


def test_transfusion_patches_noise_and_timesteps(modules):
    """Patch positions carry sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε with one timestep per image; zeros elsewhere."""
    dm = modules["transfusion"]
    b = first_batch(dm)
    mask = b["patch_mask"]
    assert torch.equal(mask, b["tokens"] == PATCH) and mask.any()
    assert b["patches"].shape == (*mask.shape, dm.patch_dim) == b["noise"].shape
    assert (b["patches"][~mask] == 0).all() and (b["noise"][~mask] == 0).all() and (b["timesteps"][~mask] == 0).all()
    ds = dm.train_set
    epoch, i = 0, next(iter(dm.train_dataloader().sampler))[1]
    item = ds[(epoch, i)]
    clean = torch.from_numpy(ds.packed.patches[ds.packed.patch_offsets[i] : ds.packed.patch_offsets[i + 1]])
    ab = torch.from_numpy(cosine_alpha_bar(1000)).float()[item["timesteps"][item["patch_mask"]]][:, None]
    expect = ab.sqrt() * clean + (1 - ab).sqrt() * item["noise"][item["patch_mask"]]
    torch.testing.assert_close(item["patches"][item["patch_mask"]], expect, rtol=1e-5, atol=1e-5)


def test_same_seed_same_batches_other_seed_differs(modules, cache_dir):
    """Two instances with one seed give byte-identical batches in order; another seed gives other batches."""
    a, b = modules["transfusion"], MultiModalDataModule(setting="transfusion", cache_dir=cache_dir, **SMALL_DATA)
    b.setup("fit")
    for x, y in zip(a.train_dataloader(), b.train_dataloader(), strict=False):
        assert all(torch.equal(x[k], y[k]) for k in x)
        break
    for x, y in zip(a.val_dataloader()[0], b.val_dataloader()[0], strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    c = MultiModalDataModule(setting="transfusion", cache_dir=cache_dir, **{**SMALL_DATA, "seed": 1})
    c.setup("fit")
    assert not torch.equal(first_batch(a)["tokens"], first_batch(c)["tokens"])
    sampler = a.train_dataloader().sampler
    first = list(sampler)[:5]
    sampler.set_epoch(1)
    assert list(sampler)[:5] != first  # a new epoch, a new order


def test_cached_training_patches_give_the_batches_of_a_fresh_encoding(modules, cache_dir, monkeypatch):
    """Transfusion's training patches, encoded once per process and shared by later runs, give every later seed the
    batches it gets from a process that never encoded them; the shared array cannot be written."""
    seed1 = {**SMALL_DATA, "seed": 1}
    monkeypatch.setattr("datamodules.multimodal._TRAIN_PATCHES", {})
    fresh = MultiModalDataModule(setting="transfusion", cache_dir=cache_dir, **seed1)
    fresh.setup("fit")
    shared = MultiModalDataModule(setting="transfusion", cache_dir=cache_dir, **seed1)
    shared.setup("fit")  # reads the patches `fresh` encoded
    for x, y in zip(fresh.train_dataloader(), shared.train_dataloader(), strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    cached = next(iter(multimodal._TRAIN_PATCHES.values()))
    with pytest.raises(ValueError, match="read-only"):
        cached[0, 0, 0] = 1.0


def test_train_and_validation_are_disjoint(modules):
    """No text document, image or utterance of validation is also in training."""
    c = modules["three_modality"].corpus
    train_text = {tuple(c.text_train[i]) for i in range(len(c.text_train))}
    assert not any(tuple(c.text_val[i]) in train_text for i in range(len(c.text_val)))
    for src in c.images:
        train = {im.tobytes() for im in src.images[~src.is_val]}
        assert not any(im.tobytes() in train for im in src.images[src.is_val])
    train_sent = {tuple(c.speech_train.transcripts[i]) for i in range(len(c.speech_train.transcripts))}
    assert not any(tuple(c.speech_val.transcripts[i]) in train_sent for i in range(len(c.speech_val.transcripts)))


def test_dataset_card_and_real_speech_validation(modules, cache_dir):
    """The card records sources, sizes, VQ error and units/s; three_modality has a real-speech validation loader."""
    dm = modules["three_modality"]
    card = dm.corpus.card
    assert any("fashion" in s for s in card["sources"]) and any("espeak" in s for s in card["sources"])
    assert all(0 < im["vq_val_mse"] < im["pixel_variance"] / 5 for im in card["images"])
    assert 20 < card["speech"]["speech_train"]["units_per_second"] < 70
    assert len(dm.val_dataloader()) == 2 and "val_real_speech" in dm.val_sets
    saved = list((__import__("pathlib").Path(cache_dir)).glob("v*/card.json"))
    assert saved and json.loads(saved[0].read_text())["build_time_s"]["total_s"] > 0


def test_bad_input(cache_dir, tmp_path):
    """Unknown setting, a sequence too short for an image, and a missing own-data folder fail clearly."""
    with pytest.raises(ValueError, match=r"unknown setting 'dalle'.*'transfusion', 'chameleon', 'three_modality'"):
        MultiModalDataModule(setting="dalle")
    short = MultiModalDataModule(setting="chameleon", cache_dir=cache_dir, **{**SMALL_DATA, "seq_len": 32})
    with pytest.raises(ValueError, match=r"seq_len=32 is too short to hold one fashion_mnist image"):
        short.setup("fit")
    missing = MultiModalDataModule(setting="chameleon", cache_dir=str(tmp_path), own_data=str(tmp_path / "nowhere"))
    with pytest.raises(SourceUnavailable, match="documents.jsonl not found"):
        missing.prepare_data()


def test_corrupt_cache_is_detected_and_rebuilt(modules, cache_dir):
    """A cache file that no longer matches its manifest is reported and rebuilt, never silently used."""
    dm = modules["chameleon"]
    from datamodules.prepare import prepare_corpus

    folder = prepare_corpus(dm.params, cache_dir, verbose=False)
    (folder / "ragged.npz").write_bytes(b"truncated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = prepare_corpus(dm.params, cache_dir, verbose=False)
    assert any("rebuilding the data cache" in str(w.message) for w in caught)
    fresh = MultiModalDataModule(setting="chameleon", cache_dir=cache_dir, **SMALL_DATA)
    fresh.setup("fit")
    assert again == folder and np.array_equal(fresh.train_set.packed.ids, dm.train_set.packed.ids)


def test_a_speech_corpus_takes_its_text_and_images_from_the_image_text_corpus(modules, tmp_path):
    """three_modality's corpus holds the tokenizer, text and images of the one the settings without speech use (copied,
    not fitted again), and they equal what fitting them afresh on its own parameters gives."""
    from datamodules.prepare import _build_image_text, _load_sources
    from datamodules.text import load_tokenizer

    speech, image_text = modules["three_modality"], modules["chameleon"]
    assert speech.corpus_folder != image_text.corpus_folder
    shared = ["tokenizer.json", *(f.name for f in image_text.corpus_folder.glob("image*.npz"))]
    assert len(shared) == 3
    for name in shared:
        assert (speech.corpus_folder / name).read_bytes() == (image_text.corpus_folder / name).read_bytes(), name
    loaded = _load_sources(speech.params)
    tok, arrays, card, _ = _build_image_text(tmp_path, speech.params, loaded)
    assert tok.get_vocab() == load_tokenizer(speech.corpus_folder / "tokenizer.json").get_vocab()
    assert np.array_equal(arrays["text_train"].values, speech.corpus.text_train.values)
    for k, src in enumerate(speech.corpus.images):
        with np.load(tmp_path / f"image{k}.npz") as fresh:
            assert np.array_equal(fresh["codes"], src.codes) and np.array_equal(fresh["vq_codebook"], src.vq.codebook)
    assert card["images"] == speech.corpus.card["images"] and card["text"] == speech.corpus.card["text"]
    assert speech.corpus.card["speech"]["speech_train"]["utterances"] > 0


def _build_after_a_pause(root: str, log: str) -> str:
    def build(folder):
        time.sleep(1.0)
        (folder / "data.txt").write_text("built")
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")

    return str(cache.build_or_load(root, {"probe": 1}, build)[0])


def test_two_processes_preparing_one_cache_build_it_once(tmp_path):
    """A process asking for a cache folder another one is building waits for it and uses it: one build, one folder."""
    log = tmp_path / "builds.log"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        folders = pool.starmap(_build_after_a_pause, [(str(tmp_path / "cache"), str(log))] * 2)
    assert folders[0] == folders[1]
    assert len(log.read_text().splitlines()) == 1


def test_own_data_uses_the_same_code_path(tmp_path):
    """A folder of JSONL documents with .npy images and audio serves chameleon and three_modality batches."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "wav").mkdir()
    lines = [
        {"text": f"passage number {i} about gardens, weather and tea.", "split": "val" if i < 4 else "train"}
        for i in range(40)
    ]
    for i in range(60):
        np.save(tmp_path / "img" / f"{i}.npy", (rng.random((8, 8)) * 255).astype(np.uint8))
        lines.append({"text": f"a square number {i}", "image": f"img/{i}.npy", "split": "val" if i < 6 else "train"})
    for i in range(30):
        t = np.arange(8000) / 16000
        np.save(tmp_path / "wav" / f"{i}.npy", (0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t)).astype(np.float32))
        lines.append(
            {"text": f"tone {i}", "audio": f"wav/{i}.npy", "sample_rate": 16000, "split": "val" if i < 4 else "train"}
        )
    (tmp_path / "documents.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    own = dict(
        own_data=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        seq_len=64,
        batch_size=2,
        text_vocab_size=300,
        image_codebook=16,
        speech_units=8,
        val_sequences=2,
    )
    for setting in ("chameleon", "three_modality"):
        dm = MultiModalDataModule(setting=setting, **own)
        dm.prepare_data()
        dm.setup("fit")
        b = first_batch(dm)
        assert b["tokens"].shape == (2, 64)
        assert dm.corpus.images[0].name == "own:8x8x1"
        assert any("own data" in s for s in dm.corpus.card["sources"])
    (tmp_path / "documents.jsonl").write_text('{"text": "x", "image": "img/missing.npy"}\n')
    from datamodules.errors import CorruptSource
    from datamodules.own import load_own_data

    with pytest.raises(CorruptSource, match=r"documents.jsonl:1"):
        load_own_data(tmp_path)


def _own_folder(tmp_path, captions, n_text=40):
    """A corpus of text and 8x8 images with the given captions (no split marks)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(parents=True)
    lines = [{"text": f"passage number {i} about gardens, weather and tea."} for i in range(n_text)]
    for i, caption in enumerate(captions):
        np.save(tmp_path / "img" / f"{i}.npy", (rng.random((8, 8)) * 255).astype(np.uint8))
        lines.append({"text": caption, "image": f"img/{i}.npy"})
    (tmp_path / "documents.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return tmp_path


def test_own_data_with_one_repeated_caption_still_validates_images(tmp_path):
    """The probe: the split hashed the caption alone, so 60 images captioned "a photo" all went to training and the
    report had no image validation."""
    from datamodules.own import load_own_data

    own = load_own_data(_own_folder(tmp_path, ["a photo"] * 60))
    (images,) = own.images
    assert 0 < (images.split == "val").sum() < 60
    assert own.text.val  # text keeps its validation documents too


def test_own_data_gives_every_modality_a_validation_document_or_says_how(tmp_path):
    from datamodules.errors import SourceUnavailable
    from datamodules.own import VAL_FRACTION, load_own_data

    own = load_own_data(_own_folder(tmp_path / "few", ["one", "two", "three"], n_text=3))
    assert (own.images[0].split == "val").sum() >= 1 and len(own.text.val) >= 1 and VAL_FRACTION < 1
    with pytest.raises(
        SourceUnavailable, match=r'no (validation|training) document for the images of own:8x8x1.*mark one with "split"'
    ):
        load_own_data(_own_folder(tmp_path / "single", ["lonely"], n_text=5))


def test_truncations_are_noted_for_the_console_and_the_run_record(tmp_path):
    """The probe: text_ratio cut the training text to a sixth and validation had 6 of the 32 sequences asked for,
    both silently."""
    folder = _own_folder(tmp_path, [f"a square number {i}" for i in range(60)], n_text=200)
    own = dict(own_data=str(folder), cache_dir=str(tmp_path / "cache"), text_vocab_size=300, image_codebook=16)
    dm = MultiModalDataModule(setting="chameleon", seq_len=64, batch_size=2, val_sequences=32, text_ratio=0.2, **own)
    dm.prepare_data()
    dm.setup("fit")
    assert any(n.startswith("train: text_ratio=0.2") and "text-only tokens" in n for n in dm.notes), dm.notes
    assert any(n.startswith("val: ") and "validation sequences of the 32 requested" in n for n in dm.notes), dm.notes
