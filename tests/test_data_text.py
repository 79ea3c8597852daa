"""Text sources, the corpus split and the byte-level BPE tokenizer (datamodules/text.py), on the real offline data."""

import json
import socket
import warnings
import zlib
from pathlib import Path

import pytest

from datamodules import text

SPECIALS = ["<pad>", "<bos>", "<eos>", "<img>", "</img>"]
TRICKY = "Café naïve — “quotes”\n\ttabs  and  spaces\r\n😀👩‍👩‍👧 ünïcödé 日本語 \x00 end\n"

has_austen = any(p.is_file() for p in text.AUSTEN_CANDIDATES)
needs_austen = pytest.mark.skipif(not has_austen, reason="janeaustenr Rdata.rdb missing: run `bash setup.sh`")
needs_fortunes = pytest.mark.skipif(
    not text.FORTUNES_ROOT.is_dir(), reason="Debian fortunes missing: run `bash setup.sh` (apt-get install fortunes)"
)


@pytest.fixture(scope="module")
def austen() -> dict[str, list[str]]:
    if not has_austen:
        pytest.skip("janeaustenr Rdata.rdb missing: run `bash setup.sh`")
    return text.load_austen()


@pytest.fixture(scope="module")
def austen_tokenizer(austen):
    return text.train_bpe((p for ps in austen.values() for p in ps), vocab_size=4096, special_tokens=SPECIALS)


@needs_austen
def test_austen_six_novels_with_plausible_size(austen):
    """The pure-Python R lazy-load parser yields the six novels with their known sizes (3.95M raw chars, 10,298
    paragraphs)."""
    lines = text.load_austen_lines()
    raw_chars = sum(len(line) for novel in lines.values() for line in novel)
    assert 3_800_000 <= raw_chars <= 4_100_000
    assert len(austen) == 6
    assert {"Emma", "Persuasion", "Pride and Prejudice"} <= set(austen)
    assert 10_000 <= sum(len(ps) for ps in austen.values()) <= 10_600
    persuasion_chars = sum(len(p) for p in austen["Persuasion"])
    assert 400_000 <= persuasion_chars <= 500_000
    assert all(p and p == " ".join(p.split()) for ps in austen.values() for p in ps)


@needs_fortunes
def test_fortunes_load_without_separators():
    """Fortunes split into ~14.7k stripped quotes (15.2k would mean the art files crept in); no `%` lines remain."""
    items = text.load_fortunes()
    assert 14_000 <= len(items) <= 15_000
    assert all(item == item.strip() and item for item in items)
    assert not any(line.strip() == "%" for item in items for line in item.splitlines())


def test_fortunes_skip_art_index_offensive_and_subfolders(tmp_path):
    """Only top-level quote files are read: art, ascii-art, *.dat, *.u8, *-o and subfolders (off/) are skipped."""
    (tmp_path / "off").mkdir()
    for name in ("art", "ascii-art", "good.dat", "good.u8", "rude-o", "off/rude"):
        (tmp_path / name).write_text(f"skip {name}\n%\n")
    (tmp_path / "good").write_text("  first quote\n\t-- someone\n%\n\n%\nsecond\n%  \n")
    assert text.load_fortunes(tmp_path) == ["first quote\n\t-- someone", "second"]


@needs_austen
@needs_fortunes
def test_corpus_split_disjoint_persuasion_in_val_and_deterministic(austen):
    """Train and val share no text, Persuasion is val-only, and two loads give identical splits."""
    corpus = text.load_text_corpus()
    assert corpus.sources == [text.AUSTEN_SOURCE, text.FORTUNES_SOURCE]
    assert corpus.warnings == []
    assert not set(corpus.train) & set(corpus.val)
    persuasion = set(austen["Persuasion"])
    assert persuasion <= set(corpus.val)
    assert not persuasion & set(corpus.train)
    # Val is Persuasion plus roughly 5% of the fortunes.
    n_fortunes_val = len(set(corpus.val) - persuasion)
    assert 400 <= n_fortunes_val <= 1_100
    again = text.load_text_corpus()
    assert (again.train, again.val) == (corpus.train, corpus.val)


def test_fallback_to_python_docs_when_debian_sources_missing(monkeypatch):
    """With both Debian loaders failing, the corpus falls back to the Python docs, says so, and warns."""

    def missing(*args, **kwargs):
        raise text.SourceUnavailable("not installed (test)")

    monkeypatch.setattr(text, "load_austen", missing)
    monkeypatch.setattr(text, "load_fortunes", missing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = text.load_text_corpus()
    assert corpus.sources == [text.PYDOCS_SOURCE]
    assert any("falling back" in str(w.message) for w in caught)
    assert any("falling back" in w for w in corpus.warnings)
    assert corpus.train and corpus.val
    assert not set(corpus.train) & set(corpus.val)


@needs_austen
def test_one_missing_debian_source_is_reported(monkeypatch):
    """Without fortunes the corpus is Austen alone, and the missing source is recorded and warned about."""

    def missing(*args, **kwargs):
        raise text.SourceUnavailable("fortunes not installed (test)")

    monkeypatch.setattr(text, "load_fortunes", missing)
    with pytest.warns(RuntimeWarning, match="fortunes not installed"):
        corpus = text.load_text_corpus()
    assert corpus.sources == [text.AUSTEN_SOURCE]
    assert corpus.warnings == ["fortunes not installed (test)"]
    assert not set(corpus.train) & set(corpus.val)


def test_no_source_at_all_raises(monkeypatch):
    """If even the fallback yields nothing, SourceUnavailable is raised rather than an empty corpus."""

    def missing(*args, **kwargs):
        raise text.SourceUnavailable("not installed (test)")

    monkeypatch.setattr(text, "load_austen", missing)
    monkeypatch.setattr(text, "load_fortunes", missing)
    monkeypatch.setattr(text, "load_python_docs", lambda: [])
    with warnings.catch_warnings(), pytest.raises(text.SourceUnavailable, match="no text source"):
        warnings.simplefilter("ignore")
        text.load_text_corpus()


def test_missing_sources_raise_source_unavailable_with_install_hint(tmp_path):
    """Absent files raise SourceUnavailable naming how to install them."""
    with pytest.raises(text.SourceUnavailable, match="setup.sh"):
        text.load_austen(tmp_path / "nowhere")
    with pytest.raises(text.SourceUnavailable, match="apt-get install"):
        text.load_fortunes(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "payload",
    [
        b"garbage, not a lazy-load database" * 10,
        b"\x00\x00\x00\x10" + b"not zlib at all",
        b"\x00\x00\x00\x05" + zlib.compress(b"hello"),
        b"\x00\x00\x00\x0a" + zlib.compress(b"X\n\x00\x00\x00\x02ab"),
    ],
    ids=["garbage", "bad-zlib", "not-xdr", "short-xdr"],
)
def test_corrupt_rdb_raises_clear_error(tmp_path, payload):
    """A garbage Rdata.rdb raises CorruptSource naming the file, not a bare struct/zlib error."""
    rdb = tmp_path / "Rdata.rdb"
    rdb.write_bytes(payload)
    with pytest.raises(text.CorruptSource, match="Rdata.rdb"):
        text.load_austen(tmp_path)


@needs_austen
def test_truncated_rdb_raises_clear_error(tmp_path):
    """A real Rdata.rdb cut short raises CorruptSource (truncated record), not a partial corpus."""
    real = next(p for p in text.AUSTEN_CANDIDATES if p.is_file()).read_bytes()
    rdb = tmp_path / "Rdata.rdb"
    rdb.write_bytes(real[: len(real) // 2])
    with pytest.raises(text.CorruptSource, match="truncated"):
        text.load_austen(rdb)


def test_bpe_specials_first_and_exact_round_trip():
    """Specials get ids 0..k-1 and encode as one token; arbitrary Unicode round-trips exactly (byte-level)."""
    docs = text.load_python_docs()
    tok = text.train_bpe(docs, vocab_size=600, special_tokens=SPECIALS)
    for i, special in enumerate(SPECIALS):
        assert tok.token_to_id(special) == i
        assert tok.encode(special).ids == [i]
    assert tok.encode("<bos>hello<eos>").ids[0] == 1
    for sample in (TRICKY, docs[0], " leading space", ""):
        assert tok.decode(tok.encode(sample).ids) == sample


def test_bpe_deterministic_and_save_load(tmp_path):
    """Two trainings on the same input give identical JSON; save/load preserves it exactly."""
    docs = text.load_python_docs()
    first = text.train_bpe(docs, vocab_size=800, special_tokens=SPECIALS, seed=0)
    second = text.train_bpe(iter(docs), vocab_size=800, special_tokens=SPECIALS, seed=1)
    model_a = json.loads(first.to_str())["model"]
    model_b = json.loads(second.to_str())["model"]
    assert model_a["vocab"] == model_b["vocab"]
    assert model_a["merges"] == model_b["merges"]
    path = tmp_path / "sub" / "tok.json"
    text.save_tokenizer(first, path)
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp file left behind
    assert text.load_tokenizer(path).to_str() == first.to_str()


@needs_austen
def test_bpe_on_austen_round_trip_and_compression(austen, austen_tokenizer):
    """At V=4096 Austen round-trips exactly and compresses to ~4.1 chars/token (measured 4.14; accept 3.8-4.5)."""
    paragraphs = [p for ps in austen.values() for p in ps]
    tok = austen_tokenizer
    assert tok.get_vocab_size() == 4096
    sample = "\n\n".join(austen["Emma"][:200])
    assert tok.decode(tok.encode(sample).ids) == sample
    assert tok.decode(tok.encode(TRICKY).ids) == TRICKY
    n_tokens = sum(len(enc.ids) for enc in tok.encode_batch(paragraphs))
    chars_per_token = sum(len(p) for p in paragraphs) / n_tokens
    assert 3.8 <= chars_per_token <= 4.5


def test_loaders_make_no_network_access(monkeypatch):
    """Every loader and BPE training run with socket connects forbidden (offline by construction)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    docs = text.load_python_docs()
    text.train_bpe(docs[:200], vocab_size=400, special_tokens=SPECIALS)
    if has_austen:
        text.load_austen()
    if text.FORTUNES_ROOT.is_dir():
        text.load_fortunes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus = text.load_text_corpus()
    assert corpus.train


def test_source_candidates_point_at_setup_sh_location():
    """The default Austen path is the one setup.sh extracts to, so `bash setup.sh` makes the loader work."""
    setup = (Path(__file__).resolve().parents[1] / "setup.sh").read_text()
    assert ".cache/debian/janeaustenr" in setup
    assert str(text.AUSTEN_CANDIDATES[0]).endswith(
        ".cache/debian/janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
    )
