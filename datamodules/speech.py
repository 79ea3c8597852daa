"""Speech sources, all offline (docs/data.md); features and discrete units are in units.py.

* `EspeakSynth`: in-process espeak-ng text-to-speech through the library and data bundled in the PyPI wheel
  `espeakng-loader` (synthetic speech with exact transcripts, any amount).
* `load_asterisk_prompts`: real speech, one professional speaker, from Debian's Asterisk prompt packages.
* `synthesize_corpus`: picks sentences of a text corpus and speaks them.

Shapes: S samples.
"""

from __future__ import annotations

import ctypes
import functools
import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.errors import SourceUnavailable

ASTERISK_ROOT = "/usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"


@dataclass
class Utterance:
    """One spoken utterance with its transcript.

    Attributes:
        text: The transcript.
        audio: (S,) float32 mono waveform in [-1, 1].
        sample_rate: Samples per second of `audio`.
        source: Where it came from, as `corpus_or_engine:detail`, e.g. `asterisk:digits/1` or `espeak:en-us`.
    """

    text: str
    audio: np.ndarray
    sample_rate: int
    source: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.audio) / self.sample_rate


# -- espeak-ng, in process ---------------------------------------------------------------------------------------------

# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # synthesis runs inside espeak_Synth and hands PCM to our callback
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit() inside the library
_PARAM_RATE = 1  # espeakRATE, words per minute
_EE_OK = 0

# int (*t_espeak_callback)(short *wav, int numsamples, espeak_EVENT *events); returning 0 continues synthesis.
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """The process-wide espeak-ng library: loaded and initialised once, because its state is global in C."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise SourceUnavailable(
                "espeak-ng is unavailable: `pip install espeakng-loader` (or run `bash setup.sh`)"
            ) from err
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data_path = espeakng_loader.get_data_path().encode()
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise SourceUnavailable(f"espeak_Initialize failed ({rate}); reinstall with `pip install espeakng-loader`")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        # The C library keeps only a raw pointer to the callback: holding it here keeps it from being collected.
        self._callback = _CALLBACK_TYPE(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n_samples: int, events) -> int:
        if wav and n_samples > 0:  # wav is NULL once synthesis has finished
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, rate: int) -> np.ndarray:
        """Speak `text`; returns the int16 PCM samples."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng voice {voice!r} not found")
        self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        self.lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


@functools.cache
def _espeak() -> _Espeak:
    return _Espeak()


class EspeakSynth:
    """Text-to-speech with espeak-ng running in this process.

    All instances share one global espeak-ng library, initialised on first use; each call sets its own voice and
    rate, so instances with different settings can be mixed. Not thread-safe: call it from one thread at a time.

    Determinism: espeak-ng keeps a little state between calls in C statics (the phase of its pitch flutter, which
    survives even `espeak_Terminate` and re-initialisation), so one text spoken twice in a process can differ by a
    few samples. The same sequence of calls in a fresh process gives identical samples, so a corpus built first
    thing in a process (and cached) is reproducible.

    Args:
        voice: espeak-ng voice name. One voice by default, so text→speech stays a consistent mapping (units from
            spectral k-means depend on the voice).
            Note `en-gb` does not exist in the bundled data; British English is `en`.
        rate: Speaking rate in words per minute (espeak-ng's default is 175).

    Raises:
        SourceUnavailable: If `espeakng-loader` is not installed.
    """

    def __init__(self, voice: str = "en-us", rate: int = 175) -> None:
        self.voice = voice
        self.rate = rate
        self.sample_rate = _espeak().sample_rate

    @property
    def source(self) -> str:
        """Source tag for utterances made by this synthesiser."""
        return f"espeak:{self.voice}"

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """`text` spoken: (S,) float32 waveform in [-1, 1], and its sample rate (22050 Hz for the bundled voices)."""
        pcm = _espeak().synthesize(text, self.voice, self.rate)
        return pcm.astype(np.float32) / 32768.0, self.sample_rate


def synthesize_corpus(
    texts: Iterable[str],
    synth: EspeakSynth,
    max_chars: int = 160,
    min_chars: int = 20,
    max_sentences: int | None = None,
) -> list[Utterance]:
    """One utterance per sentence of `texts` (documents or paragraphs, each split into sentences) whose length lies
    in [min_chars, max_chars] (long sentences make long unit sequences), in corpus order, stopping after
    `max_sentences` utterances (None: all); deterministic for the same inputs."""
    utterances = []
    for text in texts:
        # A sentence ends at `.`, `!` or `?` before whitespace; whitespace (line breaks too) is collapsed.
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if not sentence or not min_chars <= len(sentence) <= max_chars:
                continue
            if max_sentences is not None and len(utterances) >= max_sentences:
                return utterances
            audio, sample_rate = synth.synthesize(sentence)
            utterances.append(Utterance(sentence, audio, sample_rate, synth.source))
    return utterances


# -- Real speech: Asterisk prompts -------------------------------------------------------------------------------------


def load_asterisk_prompts(root: str = ASTERISK_ROOT, transcripts: str = ASTERISK_TRANSCRIPTS) -> list[Utterance]:
    """Load the Asterisk core prompts: real speech by one speaker (Allison Smith), 8 kHz, with transcripts.

    `root` holds the en_US WAVs (Debian `asterisk-core-sounds-en-wav`), `transcripts` is the gzipped transcript file
    (Debian `asterisk-core-sounds-en`). A WAV's path relative to `root`, without extension (e.g. `digits/1`), is its
    transcript key; utterances come sorted by key, with `source` set to `asterisk:<key>`, and WAVs without a speech
    transcript (tones) are skipped. SourceUnavailable if the WAVs or the transcript file are missing.
    """
    import soundfile

    root_path, transcripts_path = Path(root), Path(transcripts)
    if not root_path.is_dir() or not transcripts_path.is_file():
        raise SourceUnavailable(
            f"Asterisk prompts not found ({root}, {transcripts}): run `bash setup.sh`, or "
            "`apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en`"
        )
    texts = {}  # from `name: text` lines, but for `;` comments and non-speech entries such as `[beep tone]`
    with gzip.open(transcripts_path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = (part.strip() for part in line.split(":", 1))
            # Only a fully bracketed text is a sound description; `letters/at: at [@]` is still speech.
            if text and not (text.startswith("[") and text.endswith("]")):
                texts[name] = text
    utterances = []
    for wav in sorted(root_path.rglob("*.wav")):
        key = wav.relative_to(root_path).with_suffix("").as_posix()
        if key not in texts:
            continue
        audio, sample_rate = soundfile.read(wav, dtype="float32", always_2d=True)
        utterances.append(Utterance(texts[key], audio.mean(axis=1), int(sample_rate), f"asterisk:{key}"))
    return utterances
