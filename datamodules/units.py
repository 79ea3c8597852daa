"""Speech features and discrete units, in numpy/scipy (no torchaudio: it does not import next to our torch build).

* `log_mel`: log-mel features.
* `SpeechUnits`: HuBERT-style discrete units without a network: k-means over context-stacked, per-utterance
  normalised log-mels (40 mels, ±2 frames, K=64: the variant whose units best told the same sentence from a
  different one).
* `merge_repeats`: consecutive duplicate units merged, as HuBERT-style unit LMs do.

Shapes: T frames, F n_mels, S samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.signal import resample_poly

from datamodules.errors import DataMismatch
from datamodules.speech import Utterance

HOP_MS, WIN_MS = 10, 25  # log-mel frame step and window: a frame per 10 ms, each over 25 ms of audio
_SETTINGS = ("n_units", "n_mels", "context", "seed", "max_frames")  # what SpeechUnits.state() saves besides centroids

# -- Features ----------------------------------------------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)  # HTK formula


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """HTK-style triangular mel filterbank from 0 Hz to Nyquist, peak height 1: (n_mels, n_fft // 2 + 1) float32
    weights to apply to a power spectrum."""
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
    hop_ms: float = HOP_MS,
    win_ms: float = WIN_MS,
    target_rate: int = 16000,
) -> np.ndarray:
    """(T, n_mels) float32 log(mel power + 1e-6) of an (S,) mono waveform: Hann windows of `win_ms`, a frame every
    `hop_ms`.

    The audio is resampled to `target_rate` so 8 kHz and 22.05 kHz sources share one filterbank. Frames are not
    centred: frame t covers samples [t·hop, t·hop + win), so there are 1 + (S - win) // hop frames (at least 1;
    shorter audio is zero-padded to one window).
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


# -- Discrete units ----------------------------------------------------------------------------------------------------


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
    with ±2 neighbouring frames stacked into one 200-dim vector. Units are not speaker-invariant.

    Args:
        n_units: Codebook size K (the datamodule's `speech_units`); the fit needs at least K frames.
        n_mels: Mel bands per frame.
        context: Frames stacked on each side.
        seed: Seeds the frame sample and k-means; the fit is deterministic for a given seed and input.
        max_frames: At most this many frames, drawn without replacement, are used to fit k-means.
    """

    def __init__(self, n_units: int = 64, n_mels: int = 40, context: int = 2, seed: int = 0, max_frames: int = 100_000):
        self.n_units, self.n_mels, self.context, self.seed, self.max_frames = n_units, n_mels, context, seed, max_frames
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
        if len(feats) < self.n_units:  # k-means needs a frame per centroid
            seconds, n = sum(u.duration for u in utterances), len(utterances)
            raise DataMismatch(
                f"{self.n_units} speech units need at least {self.n_units} frames of training speech (a frame per "
                f"{HOP_MS} ms: {(WIN_MS + HOP_MS * (self.n_units - 1)) / 1000:.2f} s in one utterance); the training "
                f"speech gives {len(feats)} ({seconds:.2f} s in {n} utterance{'s' * (n != 1)}): add speech or lower "
                f"speech_units to at most {len(feats)}"
            )
        if len(feats) > self.max_frames:
            rng = np.random.default_rng(self.seed)
            feats = feats[np.sort(rng.choice(len(feats), self.max_frames, replace=False))]
        # Small batches: as good an inertia as 4096 on 30k frames, and several times faster.
        kmeans = MiniBatchKMeans(n_clusters=self.n_units, random_state=self.seed, batch_size=1024, n_init=3)
        # One thread: the centroids then do not depend on the machine's core count (OpenMP reductions change the
        # last bits), and on small shared machines it is also faster.
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

    def state(self) -> dict[str, np.ndarray]:
        """The fitted codebook and settings as plain numpy arrays (for `np.savez` caching)."""
        if self.centroids is None:
            raise RuntimeError("SpeechUnits is not fitted")
        settings = {k: np.asarray(getattr(self, k)) for k in _SETTINGS}
        return {**settings, "centroids": self.centroids}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> SpeechUnits:
        """Rebuild a fitted `SpeechUnits` from `state()`."""
        units = cls(**{k: int(state[k]) for k in _SETTINGS})
        units.centroids = np.asarray(state["centroids"], dtype=np.float32)
        return units
