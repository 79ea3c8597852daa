"""Offline text corpora and a byte-level BPE tokenizer.

Sources (docs/data.md), all read from local files with no network access:

* Jane Austen's six novels from the Debian package ``r-cran-janeaustenr``, parsed from R's lazy-load database
  ``Rdata.rdb`` in pure Python (no R needed).
* Debian ``fortunes`` (short quotes, one document each).
* Fallback that is always present: paragraphs of the Python docs bundled in the standard library (``pydoc_data``).

``load_text_corpus`` combines them into a train/validation split, and ``train_bpe`` trains a Hugging Face byte-level
BPE tokenizer on any iterable of texts.
"""

from __future__ import annotations

import itertools
import re
import struct
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from common.files import atomic_write
from common.hashing import stable_fraction
from datamodules.errors import CorruptSource, SourceUnavailable

_REPO_ROOT = Path(__file__).resolve().parents[1]
_RDB_SUBPATH = Path("usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
AUSTEN_CANDIDATES = (
    _REPO_ROOT / ".cache/debian/janeaustenr" / _RDB_SUBPATH,  # where setup.sh extracts the .deb
    Path("/") / _RDB_SUBPATH,  # R's package installed system-wide
)
FORTUNES_ROOT = Path("/usr/share/games/fortunes")
AUSTEN_SOURCE = "janeaustenr (Debian r-cran-janeaustenr)"
FORTUNES_SOURCE = "fortunes (Debian)"
PYDOCS_SOURCE = "python docs (stdlib pydoc_data.topics)"
VAL_NOVEL = "Persuasion"

_INSTALL_AUSTEN = (
    "run `bash setup.sh`, or by hand: `apt-get download r-cran-janeaustenr && "
    "dpkg-deb -x r-cran-janeaustenr_*_all.deb .cache/debian/janeaustenr`"
)
_INSTALL_FORTUNES = "run `bash setup.sh`, or `apt-get install -y fortunes fortunes-min`"

# R serialization (XDR) type codes and the CHARSXP encoding bit we need (R's Defn.h).
_STRSXP = 16
_CHARSXP = 9
_LATIN1_MASK = 1 << 2
_NA_LENGTH = -1
_MINOR_WORDS = {"a", "an", "and", "of", "the"}

# Fortune files that are not prose quotes.
_FORTUNE_SKIP_NAMES = {"art", "ascii-art"}
_FORTUNE_SKIP_SUFFIXES = (".dat", ".u8", "-o")


# -- Jane Austen: R lazy-load database ---------------------------------------------------------------------------------


def _read_rdb_records(data: bytes, path: Path) -> list[bytes]:
    """Split an ``.rdb`` file into its decompressed records.

    Each record is a 4-byte big-endian uncompressed length followed by a zlib stream. The streams are read back to
    back, so the companion ``.rdx`` index (offsets and lengths) is not needed.
    """
    records = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise CorruptSource(f"{path}: truncated record header at byte {pos}")
        (expected_len,) = struct.unpack_from(">I", data, pos)
        decomp = zlib.decompressobj()
        try:
            record = decomp.decompress(data[pos + 4 :])
        except zlib.error as err:
            raise CorruptSource(f"{path}: record at byte {pos} is not a valid zlib stream ({err})") from err
        if not decomp.eof or len(record) != expected_len:
            raise CorruptSource(
                f"{path}: record at byte {pos} is truncated or has the wrong length "
                f"({len(record)} bytes decompressed, header says {expected_len})"
            )
        records.append(record)
        pos = len(data) - len(decomp.unused_data)
    return records


def _parse_character_vector(record: bytes) -> list[str | None] | None:
    """Decode one R-serialized (XDR) object if it is a character vector, else return None.

    Layout: ``"X\\n"``, format version, writer and minimum R versions, (version 3 only) the native-encoding name; then
    the object: a flags int (low byte = type), the length, and for a STRSXP that many CHARSXPs, each a flags int, a
    byte length (-1 for NA) and the bytes. Attributes, if any, follow the elements, so they can be ignored here.
    """
    if record[:2] != b"X\n":
        raise CorruptSource(f"record is not XDR-serialized R data (starts with {record[:2]!r})")
    (version,) = struct.unpack_from(">i", record, 2)
    pos = 2 + 4 + 8  # format version, then R version that wrote it and minimum R version to read it
    if version == 3:
        (enc_len,) = struct.unpack_from(">i", record, pos)
        pos += 4 + enc_len
    elif version != 2:
        raise CorruptSource(f"unsupported R serialization version {version}")

    (flags, n) = struct.unpack_from(">ii", record, pos)
    pos += 8
    if flags & 0xFF != _STRSXP:
        return None
    strings: list[str | None] = []
    for _ in range(n):
        (char_flags, length) = struct.unpack_from(">ii", record, pos)
        pos += 8
        if char_flags & 0xFF != _CHARSXP:
            raise CorruptSource(f"expected a CHARSXP inside a character vector, got type {char_flags & 0xFF}")
        if length == _NA_LENGTH:
            strings.append(None)
            continue
        raw = record[pos : pos + length]
        if len(raw) != length:
            raise CorruptSource("character vector runs past the end of its record")
        pos += length
        # R marks strings as latin-1, UTF-8 or ASCII in the CHARSXP's general-purpose bits (levels = flags >> 12).
        strings.append(raw.decode("latin-1" if (char_flags >> 12) & _LATIN1_MASK else "utf-8"))
    return strings


def _title_case(title: str) -> str:
    """``"PRIDE AND PREJUDICE"`` -> ``"Pride and Prejudice"``: most of the novels' title lines are in capitals."""
    words = title.split()
    return " ".join(
        w.capitalize() if i == 0 or w.lower() not in _MINOR_WORDS else w.lower() for i, w in enumerate(words)
    )


def load_austen_lines(root: Path | None = None) -> dict[str, list[str]]:
    """The six novels as their raw lines (NA lines become empty), keyed by title.

    Args:
        root: ``Rdata.rdb`` itself, its directory, or the folder a ``.deb`` was extracted to. By default the repo's
            ``.cache/debian/janeaustenr`` (from ``setup.sh``) and then the system-wide R library are tried.

    Raises:
        SourceUnavailable: no ``Rdata.rdb`` was found.
        CorruptSource: the file exists but is not a lazy-load DB of character vectors.
    """
    candidates = (
        list(AUSTEN_CANDIDATES) if root is None else [Path(root), Path(root) / "Rdata.rdb", Path(root) / _RDB_SUBPATH]
    )
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        tried = ", ".join(str(p) for p in candidates)
        raise SourceUnavailable(f"Jane Austen corpus not found (looked for {tried}); {_INSTALL_AUSTEN}")
    novels: dict[str, list[str]] = {}
    for i, record in enumerate(_read_rdb_records(path.read_bytes(), path)):
        try:
            strings = _parse_character_vector(record)
        except (CorruptSource, struct.error) as err:
            raise CorruptSource(f"{path}: record {i} cannot be parsed ({err})") from err
        if strings is None:
            continue
        lines = [s or "" for s in strings]
        title = next((line.strip() for line in lines if line.strip()), None)
        if title is not None:
            novels[_title_case(title)] = lines
    if not novels:
        raise CorruptSource(f"{path}: holds no character vectors; {_INSTALL_AUSTEN}")
    return novels


def load_austen(root: Path | None = None) -> dict[str, list[str]]:
    """The six Jane Austen novels as lists of paragraphs, keyed by title (e.g. ``"Emma"``, ``"Persuasion"``).

    A paragraph is a run of non-empty lines joined with spaces, whitespace collapsed. The title line and chapter
    headings are kept as their own short paragraphs. Arguments and errors as in :func:`load_austen_lines`.
    """
    novels = {}
    for title, lines in load_austen_lines(root).items():
        runs = itertools.groupby(lines, key=lambda line: bool(line.strip()))
        novels[title] = [" ".join(" ".join(run).split()) for non_empty, run in runs if non_empty]
    return novels


# -- Fortunes and the Python-docs fallback -----------------------------------------------------------------------------


def load_fortunes(root: str | Path = FORTUNES_ROOT) -> list[str]:
    """Debian fortunes, one string per quote, in a fixed order (files sorted by name).

    Only the top-level files are read, so subdirectories (offensive ``off/``, other languages) are left out, as are
    the index files (``*.dat``, ``*.u8``), offensive files (``*-o``) and the ``art``/``ascii-art`` pictures.

    Raises:
        SourceUnavailable: ``root`` is missing or holds no fortune files.
    """
    root = Path(root)
    files = []
    if root.is_dir():
        files = sorted(
            p
            for p in root.iterdir()
            if p.is_file() and p.name not in _FORTUNE_SKIP_NAMES and not p.name.endswith(_FORTUNE_SKIP_SUFFIXES)
        )
    if not files:
        raise SourceUnavailable(f"no fortune files in {root}; {_INSTALL_FORTUNES}")
    entries = (
        entry.strip()
        for path in files
        for entry in re.split(r"^%[ \t]*$", path.read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE)
    )
    return [entry for entry in entries if entry]


def load_python_docs() -> list[str]:
    """Paragraphs (blank-line separated, stripped) of the stdlib's ``pydoc_data.topics``, topics sorted by name."""
    from pydoc_data.topics import topics

    return [para.strip() for key in sorted(topics) for para in re.split(r"\n\s*\n", topics[key]) if para.strip()]


# -- Corpus with a train/validation split ------------------------------------------------------------------------------


@dataclass
class TextCorpus:
    """Train and validation documents plus a record of where they came from.

    Attributes:
        train: training documents.
        val: validation documents, disjoint from ``train`` (no text appears in both).
        sources: names of the sources actually used.
        warnings: problems met while loading (missing sources, fallbacks), also issued with ``warnings.warn``.
    """

    train: list[str]
    val: list[str]
    sources: list[str]
    warnings: list[str] = field(default_factory=list)


def _split_by_hash(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Stable hash split: the same text always lands on the same side, across processes and Python versions."""
    train, val = [], []
    for text in texts:
        (val if stable_fraction(text) < fraction else train).append(text)
    return train, val


def load_text_corpus(
    prefer_debian: bool = True, fortunes_val_fraction: float = 0.05, docs_val_fraction: float = 0.1
) -> TextCorpus:
    """Load the default text corpus and split it into train and validation documents.

    Split: the novel *Persuasion* goes entirely to validation, the other five novels to training; a stable-hash
    ``fortunes_val_fraction`` of the fortunes goes to validation. Any training text that also occurs in validation
    (e.g. a chapter heading such as "CHAPTER I", or a repeated quote) is dropped from training, so the two are disjoint.

    If a Debian source is missing, the other is used alone; if both are missing (or ``prefer_debian`` is False), the
    Python docs are used, with a ``docs_val_fraction`` hash split. Fallbacks are reported with ``warnings.warn`` and
    in ``TextCorpus.warnings``.

    Raises:
        SourceUnavailable: no source yielded any text.
        CorruptSource: a source is installed but broken (not silently replaced by a fallback).
    """
    train, val, sources, problems = [], [], [], []  # documents; names of the sources used; what was missing

    if prefer_debian:
        try:
            novels = load_austen()
        except SourceUnavailable as err:
            problems.append(str(err))
        else:
            for title, paragraphs in novels.items():
                (val if title == VAL_NOVEL else train).extend(paragraphs)
            if VAL_NOVEL not in novels:
                problems.append(f"{VAL_NOVEL!r} not among the Austen novels {sorted(novels)}; none held out")
            sources.append(AUSTEN_SOURCE)
        try:
            fortunes = load_fortunes()
        except SourceUnavailable as err:
            problems.append(str(err))
        else:
            fortunes_train, fortunes_val = _split_by_hash(fortunes, fortunes_val_fraction)
            train.extend(fortunes_train)
            val.extend(fortunes_val)
            sources.append(FORTUNES_SOURCE)

    if not sources:
        if prefer_debian:
            problems.append(f"no Debian text source available; falling back to {PYDOCS_SOURCE}")
        docs = load_python_docs()
        if docs:
            train, val = _split_by_hash(docs, docs_val_fraction)
            sources.append(PYDOCS_SOURCE)

    if not train and not val:
        raise SourceUnavailable(f"no text source yielded any documents: {'; '.join(problems) or 'nothing found'}")
    for message in problems:
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    val_set = set(val)
    train = [t for t in train if t not in val_set]
    return TextCorpus(train=train, val=val, sources=sources, warnings=problems)


# -- Byte-level BPE ----------------------------------------------------------------------------------------------------


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str], seed: int = 0) -> Tokenizer:
    """Train a byte-level BPE tokenizer (Hugging Face ``tokenizers``) on ``texts``.

    The special tokens come first, so they get ids ``0..len(special_tokens)-1``; the 256 byte symbols follow, so any
    Unicode text round-trips exactly: ``tok.decode(tok.encode(text).ids) == text`` (as long as the text does not
    itself contain a special-token string, which ``decode`` skips by default).

    Determinism: the BPE trainer has no random component. Pair counts are summed (order-free, so the thread count
    does not matter) and ties between equally frequent pairs are broken by a fixed ordering of the pairs, so the
    result depends only on the multiset of pre-tokenized words, ``vocab_size``, ``special_tokens`` and the
    ``tokenizers`` version (pinned in requirements).

    ``texts`` is any iterable (consumed once); ``vocab_size`` counts the special tokens (never split when encoding)
    and the 256 bytes; ``seed`` is accepted so every tokenizer/codebook trainer in the suite has the same signature,
    and changes nothing.
    """
    del seed  # nothing random to seed; see the docstring
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write the tokenizer as JSON, atomically."""
    atomic_write(path, tokenizer.to_str())


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer written by :func:`save_tokenizer`."""
    return Tokenizer.from_file(str(path))
