"""Speech sources and discrete speech units, all offline (see DATA.md §3–§5, §8).

* `EspeakSynth`: in-process espeak-ng text-to-speech through the library and data bundled in the PyPI wheel
  `espeakng-loader` (synthetic speech with exact transcripts, any amount).
* `load_asterisk_prompts`: real speech, one professional speaker, from Debian's Asterisk prompt packages.
* `log_mel`: numpy/scipy log-mel features (no torchaudio: it does not import next to our torch build).
* `SpeechUnits`: HuBERT-style discrete units without a network: k-means over context-stacked, per-utterance
  normalised log-mels (DATA.md §5: 40 mels, ±2 frames, K=64 worked best).
* `synthesize_corpus`: picks sentences of a text corpus and speaks them.

Shapes: T frames, F n_mels, S samples.
"""

from __future__ import annotations

import ctypes
import gzip
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

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


# ---------------------------------------------------------------------------------------------------------------------
# espeak-ng, in process
# ---------------------------------------------------------------------------------------------------------------------

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


_ESPEAK: _Espeak | None = None


def _espeak() -> _Espeak:
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    return _ESPEAK


class EspeakSynth:
    """Text-to-speech with espeak-ng running in this process (about 400× real time on one core).

    All instances share one global espeak-ng library, initialised on first use; each call sets its own voice and
    rate, so instances with different settings can be mixed. Not thread-safe: call it from one thread at a time.

    Determinism: espeak-ng keeps a little state between calls in C statics (the phase of its pitch flutter, which
    survives even `espeak_Terminate` and re-initialisation), so one text spoken twice in a process can differ by a
    few samples. The same sequence of calls in a fresh process gives identical samples, so a corpus built first
    thing in a process (and cached) is reproducible.

    Args:
        voice: espeak-ng voice name. One voice by default, so text→speech stays a consistent mapping (DATA.md §5).
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
        """Speak one text.

        Args:
            text: UTF-8 text to speak.

        Returns:
            (S,) float32 waveform in [-1, 1], and its sample rate (22050 Hz for the bundled voices).
        """
        pcm = _espeak().synthesize(text, self.voice, self.rate)
        return pcm.astype(np.float32) / 32768.0, self.sample_rate


def split_sentences(text: str) -> list[str]:
    """Split text after `.`, `!` or `?` followed by whitespace, with whitespace (line breaks too) collapsed."""
    flat = " ".join(text.split())
    return [s for s in re.split(r"(?<=[.!?])\s+", flat) if s]


def synthesize_corpus(
    texts: Iterable[str],
    synth: EspeakSynth,
    max_chars: int = 160,
    min_chars: int = 20,
    max_sentences: int | None = None,
) -> list[Utterance]:
    """Speak every sentence of `texts` whose length lies in [min_chars, max_chars], in corpus order.

    Args:
        texts: Documents or paragraphs; each is split into sentences.
        synth: The synthesiser.
        max_chars: Longest sentence kept (long sentences make long unit sequences).
        min_chars: Shortest sentence kept.
        max_sentences: Stop after this many utterances (None: all).

    Returns:
        One utterance per kept sentence; deterministic for the same inputs.
    """
    utterances = []
    for text in texts:
        for sentence in split_sentences(text):
            if not min_chars <= len(sentence) <= max_chars:
                continue
            if max_sentences is not None and len(utterances) >= max_sentences:
                return utterances
            audio, sample_rate = synth.synthesize(sentence)
            utterances.append(Utterance(sentence, audio, sample_rate, synth.source))
    return utterances


# ---------------------------------------------------------------------------------------------------------------------
# Real speech: Asterisk prompts
# ---------------------------------------------------------------------------------------------------------------------


def _read_transcripts(path: Path) -> dict[str, str]:
    """`name: text` lines into {name: text}; skips `;` comments and non-speech entries such as `[beep tone]`."""
    transcripts = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = (part.strip() for part in line.split(":", 1))
            # Only a fully bracketed text is a sound description; `letters/at: at [@]` is still speech.
            if text and not (text.startswith("[") and text.endswith("]")):
                transcripts[name] = text
    return transcripts


def load_asterisk_prompts(root: str = ASTERISK_ROOT, transcripts: str = ASTERISK_TRANSCRIPTS) -> list[Utterance]:
    """Load the Asterisk core prompts: real speech by one speaker (Allison Smith), 8 kHz, with transcripts.

    A WAV's path relative to `root`, without extension (e.g. `digits/1`), is its transcript key. WAVs without a
    speech transcript (tones) are skipped: about 563 utterances, 25.2 minutes.

    Args:
        root: Folder of the en_US WAVs (Debian `asterisk-core-sounds-en-wav`).
        transcripts: The gzipped transcript file (Debian `asterisk-core-sounds-en`).

    Returns:
        Utterances sorted by key, with `source` set to `asterisk:<key>`.

    Raises:
        SourceUnavailable: If the WAVs or the transcript file are missing.
    """
    import soundfile

    root_path, transcripts_path = Path(root), Path(transcripts)
    if not root_path.is_dir() or not transcripts_path.is_file():
        raise SourceUnavailable(
            f"Asterisk prompts not found ({root}, {transcripts}): run `bash setup.sh`, or "
            "`apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en`"
        )
    texts = _read_transcripts(transcripts_path)
    utterances = []
    for wav in sorted(root_path.rglob("*.wav")):
        key = wav.relative_to(root_path).with_suffix("").as_posix()
        if key not in texts:
            continue
        audio, sample_rate = soundfile.read(wav, dtype="float32", always_2d=True)
        utterances.append(Utterance(texts[key], audio.mean(axis=1), int(sample_rate), f"asterisk:{key}"))
    return utterances


# ---------------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)  # HTK formula


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """HTK-style triangular mel filterbank from 0 Hz to Nyquist, peak height 1.

    Returns:
        (n_mels, n_fft // 2 + 1) float32 weights to apply to a power spectrum.
    """
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.asarray(sample_rate / 2)), n_mels + 2))
    lower, center, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz - lower) / (center - lower)
    falling = (upper - fft_hz) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(
    audio: np.ndarray,
    sample_rate: int,
    n_mels: int = 40,
    hop_ms: float = 10,
    win_ms: float = 25,
    target_rate: int = 16000,
) -> np.ndarray:
    """Log-mel spectrogram with numpy/scipy (DATA.md §8: 0.9994 correlation with librosa on the same settings).

    The audio is resampled to `target_rate` so 8 kHz and 22.05 kHz sources share one filterbank. Frames are not
    centred: frame t covers samples [t·hop, t·hop + win), so there are 1 + (S - win) // hop frames (at least 1;
    shorter audio is zero-padded to one window).

    Args:
        audio: (S,) mono waveform.
        sample_rate: Its sample rate.
        n_mels: Number of mel bands.
        hop_ms: Frame step in milliseconds.
        win_ms: Hann window length in milliseconds.
        target_rate: Rate the features are computed at.

    Returns:
        (T, n_mels) float32 log(mel power + 1e-6).
    """
    x = np.asarray(audio, dtype=np.float64)
    if sample_rate != target_rate:
        g = math.gcd(int(sample_rate), int(target_rate))
        x = resample_poly(x, target_rate // g, sample_rate // g)
    win = round(target_rate * win_ms / 1000)
    hop = round(target_rate * hop_ms / 1000)
    n_fft = 1 << (win - 1).bit_length()  # next power of two ≥ window (512 for 25 ms at 16 kHz)
    if len(x) < win:
        x = np.pad(x, (0, win - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]  # (T, win), a view: no copy
    power = np.abs(np.fft.rfft(frames * np.hanning(win), n=n_fft, axis=1)) ** 2  # (T, n_fft // 2 + 1)
    mel = power @ mel_filterbank(n_mels, n_fft, target_rate).T  # (T, F)
    return np.log(mel + 1e-6).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Discrete units
# ---------------------------------------------------------------------------------------------------------------------


def merge_repeats(units: np.ndarray) -> np.ndarray:
    """Collapse runs of the same unit into one (HuBERT-style deduplication)."""
    if len(units) == 0:
        return units
    keep = np.ones(len(units), dtype=bool)
    keep[1:] = units[1:] != units[:-1]
    return units[keep]


class SpeechUnits:
    """Discrete speech units: k-means over context-stacked log-mels, a network-free stand-in for HuBERT units.

    Features per frame: 40 log-mels, normalised per utterance (CMVN, which removes level and channel differences),
    with ±2 neighbouring frames stacked into one 200-dim vector. DATA.md §5 measured this as the variant whose units
    agree best across voices. Units are not speaker-invariant; expect about 37–43 units per second after merging.

    Args:
        n_units: Codebook size K.
        n_mels: Mel bands per frame.
        context: Frames stacked on each side.
        seed: Seeds the frame sample and k-means; the fit is deterministic for a given seed and input.
        max_frames: At most this many frames, drawn without replacement, are used to fit k-means.
    """

    def __init__(self, n_units: int = 64, n_mels: int = 40, context: int = 2, seed: int = 0, max_frames: int = 100_000):
        self.n_units = n_units
        self.n_mels = n_mels
        self.context = context
        self.seed = seed
        self.max_frames = max_frames
        self.centroids: np.ndarray | None = None  # (K, (2·context + 1)·n_mels) float32

    def features(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(T, (2·context + 1)·n_mels) float32 features of one utterance."""
        mel = log_mel(audio, sample_rate, n_mels=self.n_mels)  # (T, F)
        mel = (mel - mel.mean(axis=0)) / (mel.std(axis=0) + 1e-5)
        padded = np.pad(mel, ((self.context, self.context), (0, 0)), mode="edge")
        width = 2 * self.context + 1
        stacked = np.lib.stride_tricks.sliding_window_view(padded, width, axis=0)  # (T, F, width)
        return stacked.transpose(0, 2, 1).reshape(len(mel), width * self.n_mels).astype(np.float32)

    def fit(self, utterances: Sequence[Utterance]) -> SpeechUnits:
        """Fit the codebook on the frames of `utterances` (at most `max_frames` of them, sampled with the seed)."""
        from sklearn.cluster import MiniBatchKMeans
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

        feats = np.concatenate([self.features(u.audio, u.sample_rate) for u in utterances])
        if len(feats) > self.max_frames:
            rng = np.random.default_rng(self.seed)
            feats = feats[np.sort(rng.choice(len(feats), self.max_frames, replace=False))]
        # Small batches: as good an inertia as 4096 on 30k frames, and several times faster.
        kmeans = MiniBatchKMeans(n_clusters=self.n_units, random_state=self.seed, batch_size=1024, n_init=3)
        # One thread: the centroids then do not depend on the machine's core count (OpenMP reductions change the
        # last bits), and on shared 2-core machines it is also faster (0.3 s against 0.6–6 s for 26k frames).
        with threadpool_limits(limits=1):
            self.centroids = kmeans.fit(feats).cluster_centers_.astype(np.float32)
        return self

    def encode_frames(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(T,) int64 unit of every 10 ms frame: the nearest centroid."""
        if self.centroids is None:
            raise RuntimeError("SpeechUnits is not fitted: call fit() or from_state()")
        x = self.features(audio, sample_rate)
        # Squared distance without the ‖x‖² term, which does not change the argmin.
        scores = x @ self.centroids.T - 0.5 * (self.centroids**2).sum(axis=1)
        return scores.argmax(axis=1).astype(np.int64)

    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(N,) int64 units with consecutive duplicates merged."""
        return merge_repeats(self.encode_frames(audio, sample_rate))

    def units_per_second(self, utterances: Sequence[Utterance]) -> float:
        """Merged units per second of audio over `utterances`."""
        n_units = sum(len(self.encode(u.audio, u.sample_rate)) for u in utterances)
        return n_units / sum(u.duration for u in utterances)

    def state(self) -> dict[str, np.ndarray]:
        """The fitted codebook and settings as plain numpy arrays (for `np.savez` caching)."""
        if self.centroids is None:
            raise RuntimeError("SpeechUnits is not fitted")
        settings = {k: np.asarray(getattr(self, k)) for k in ("n_units", "n_mels", "context", "seed", "max_frames")}
        return {**settings, "centroids": self.centroids}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> SpeechUnits:
        """Rebuild a fitted `SpeechUnits` from `state()`."""
        settings = {k: int(state[k]) for k in ("n_units", "n_mels", "context", "seed", "max_frames")}
        units = cls(**settings)
        units.centroids = np.asarray(state["centroids"], dtype=np.float32)
        return units
