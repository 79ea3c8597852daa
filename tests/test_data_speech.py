"""Speech sources, log-mel features and discrete units (datamodules/speech.py, units.py), all offline."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datamodules.speech import EspeakSynth, SourceUnavailable, load_asterisk_prompts, synthesize_corpus
from datamodules.units import SpeechUnits, log_mel, mel_filterbank, merge_repeats

SUBJECTS = ["the old sailor", "a small dog", "my sister", "the teacher", "our neighbour", "the farmer's wife"]
VERBS = ["found", "painted", "carried", "forgot", "watched", "opened", "remembered", "sold"]
OBJECTS = ["a green umbrella", "the wooden gate", "seven letters", "the evening train", "a basket of apples"]
ENDINGS = ["near the river", "before breakfast", "without a word", "in the cold morning", "at the market"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """n plain English sentences of 30–80 characters, the same for the same seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = [str(rng.choice(part)) for part in (SUBJECTS, VERBS, OBJECTS, ENDINGS)]
        out.append(" ".join(words).capitalize() + ".")
    return out


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every load in this file must work with networking cut off."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline data test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def synth() -> EspeakSynth:
    pytest.importorskip("espeakng_loader", reason="espeak-ng missing: `pip install espeakng-loader`")
    return EspeakSynth()


@pytest.fixture(scope="module")
def asterisk() -> list:
    try:
        return load_asterisk_prompts()
    except SourceUnavailable as err:
        pytest.skip(f"Asterisk prompts missing, run `bash setup.sh`: {err}")


@pytest.fixture(scope="module")
def tts_corpus(synth: EspeakSynth) -> list:
    return synthesize_corpus(sentences(100), synth)


def test_espeak_speaks_text(synth: EspeakSynth) -> None:
    """espeak-ng gives non-silent 22,050 Hz float audio whose length is plausible for the text."""
    text = "The quick brown fox jumps over the lazy dog."
    audio, sample_rate = synth.synthesize(text)
    assert sample_rate == 22050
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01
    assert 0.03 < len(audio) / sample_rate / len(text) < 0.2


def test_espeak_rate_changes_duration(synth: EspeakSynth) -> None:
    """A faster speaking rate gives shorter audio, and the default voice is restored for the next call."""
    text = "Please enter your password followed by the pound key."
    fast, _ = EspeakSynth(rate=300).synthesize(text)
    normal, _ = synth.synthesize(text)
    assert len(fast) < 0.8 * len(normal)


def test_espeak_deterministic_in_fresh_process(synth: EspeakSynth) -> None:
    """The same calls in two fresh processes give identical samples (in-process repeats differ by a few samples)."""
    code = (
        "import hashlib; from datamodules.speech import EspeakSynth; s = EspeakSynth(); "
        "print(hashlib.sha1(b''.join(s.synthesize(t)[0].tobytes() for t in ['Hello there.', 'Hello there.']))"
        ".hexdigest())"
    )
    repo_root = Path(__file__).resolve().parents[1]
    runs = [subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
            for _ in range(2)]  # fmt: skip
    digests = [run.stdout for run in runs]
    assert digests[0] == digests[1] and len(digests[0].strip()) == 40
    first, _ = synth.synthesize("Hello there.")
    second, _ = synth.synthesize("Hello there.")
    assert abs(len(first) - len(second)) < 0.01 * len(first)


def test_synthesize_corpus_filters_by_length(synth: EspeakSynth) -> None:
    """Only sentences within [min_chars, max_chars] are spoken, in corpus order, with exact transcripts."""
    texts = ["Too short. This sentence is long enough to keep!\nIt spans a line break, and is kept too?", "Tiny."]
    utterances = synthesize_corpus(texts, synth, max_chars=60, min_chars=20)
    assert [u.text for u in utterances] == [
        "This sentence is long enough to keep!",
        "It spans a line break, and is kept too?",
    ]
    assert all(u.source == "espeak:en-us" and u.sample_rate == 22050 and len(u.audio) > 0 for u in utterances)
    assert len(synthesize_corpus(texts, synth, max_chars=60, min_chars=20, max_sentences=1)) == 1


def test_asterisk_prompts(asterisk: list) -> None:
    """The Asterisk prompts load as about 25 minutes of 8 kHz real speech, each with a transcript, digits included."""
    assert len(asterisk) >= 500
    assert all(u.text.strip() and u.sample_rate == 8000 and u.audio.dtype == np.float32 for u in asterisk)
    assert all(not u.text.startswith("[") for u in asterisk)  # tone entries are not speech
    minutes = sum(u.duration for u in asterisk) / 60
    assert 22 < minutes < 28
    by_key = {u.source.removeprefix("asterisk:"): u for u in asterisk}
    assert by_key["digits/7"].text.lower().startswith("seven")


def test_log_mel_sine_peaks_in_its_band() -> None:
    """A 1 kHz sine at 16 kHz has its energy in the mel band whose filter covers 1 kHz most."""
    sr = 16000
    sine = np.sin(2 * np.pi * 1000 * np.arange(sr) / sr)
    feats = log_mel(sine, sr)
    expected_band = mel_filterbank(40, 512, sr)[:, 1000 * 512 // sr].argmax()  # the FFT bin of 1 kHz
    assert feats.shape == (1 + (sr - 400) // 160, 40) and feats.dtype == np.float32
    assert (feats.argmax(axis=1) == expected_band).all()


def test_log_mel_frame_count_and_resampling() -> None:
    """Frame count is 1 + (S - win) // hop at 16 kHz, and 8 kHz input is resampled to the same frames and band."""
    rng = np.random.default_rng(0)
    for n_samples in (400, 401, 559, 560, 12345):
        assert log_mel(rng.standard_normal(n_samples), 16000).shape == (1 + (n_samples - 400) // 160, 40)
    assert log_mel(np.zeros(100), 16000).shape == (1, 40)  # shorter than a window: padded to one frame
    t = np.arange(8000) / 8000
    feats_8k = log_mel(np.sin(2 * np.pi * 1000 * t), 8000)
    feats_16k = log_mel(np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000), 16000)
    assert feats_8k.shape == feats_16k.shape
    assert (feats_8k.argmax(axis=1)[2:-2] == feats_16k.argmax(axis=1)[0]).all()  # edges see the filter's ramp


def test_merge_repeats() -> None:
    """Runs of one unit collapse to a single unit."""
    np.testing.assert_array_equal(merge_repeats(np.array([3, 3, 1, 1, 1, 3, 2, 2])), [3, 1, 3, 2])
    assert len(merge_repeats(np.zeros(0, np.int64))) == 0


def test_speech_units(tts_corpus: list) -> None:
    """Units fitted on 100 sentences are in [0, K), merged without repeats, at a plausible rate, and deterministic."""
    units = SpeechUnits(n_units=64, seed=0).fit(tts_corpus)
    again = SpeechUnits(n_units=64, seed=0).fit(tts_corpus)
    np.testing.assert_array_equal(units.centroids, again.centroids)
    codes = units.encode(tts_corpus[0].audio, tts_corpus[0].sample_rate)
    assert codes.dtype == np.int64 and codes.min() >= 0 and codes.max() < 64
    assert (codes[1:] != codes[:-1]).all()
    frames = units.encode_frames(tts_corpus[0].audio, tts_corpus[0].sample_rate)
    np.testing.assert_array_equal(merge_repeats(frames), codes)
    # docs/data.md: 37–43 units/s measured after merging (fortunes, espeak en-us, K=64); the wider band allows for
    # other text and speaking styles while still catching a broken merge (≈100/s) or a collapsed codebook (≈few/s).
    all_codes = [units.encode(u.audio, u.sample_rate) for u in tts_corpus]
    assert 20 < sum(map(len, all_codes)) / sum(u.duration for u in tts_corpus) < 70
    assert len(np.unique(np.concatenate(all_codes))) > 32  # the codebook is used, not collapsed


def test_speech_units_state_round_trip(tts_corpus: list) -> None:
    """A codebook rebuilt from its numpy state encodes exactly as the original."""
    units = SpeechUnits(n_units=16, seed=1, max_frames=5000).fit(tts_corpus[:20])
    state = units.state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    restored = SpeechUnits.from_state(state)
    audio, sr = tts_corpus[0].audio, tts_corpus[0].sample_rate
    np.testing.assert_array_equal(restored.encode(audio, sr), units.encode(audio, sr))


def test_speech_units_encode_real_speech(tts_corpus: list, asterisk: list) -> None:
    """The synthetic-speech codebook also encodes 8 kHz real speech into valid units."""
    units = SpeechUnits(n_units=16, seed=0, max_frames=5000).fit(tts_corpus[:20])
    codes = units.encode(asterisk[0].audio, asterisk[0].sample_rate)
    assert len(codes) > 0 and codes.min() >= 0 and codes.max() < 16
