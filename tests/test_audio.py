import os

import numpy as np
import pytest
import soundfile as sf

from spade_tts.audio import AudioError, check_speech, load_audio, save_wav, to_mono, to_mono_16k
from spade_tts.data.voices import synthesize


@pytest.fixture(scope="module")
def speech():
    u = synthesize(["Please call Stella and ask her to bring these things."], "flite_slt")[0]
    assert u.sample_rate == 16000
    return u.audio


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"does not exist: check the path"):
        load_audio(tmp_path / "nope.wav")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\)"):
        load_audio(p)


def test_garbage_file(tmp_path):
    p = tmp_path / "garbage.wav"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(AudioError, match=r"cannot decode .*garbage.wav as audio .*convert it to WAV") as e:
        load_audio(p)
    assert "\n" not in str(e.value)


def test_header_only_wav_has_no_samples(tmp_path):
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(p)


def _tones(sr: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)


def test_stereo_44k_is_mixed_and_resampled(tmp_path):
    x44 = _tones(44100)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([x44, 0.5 * x44], axis=1), 44100, subtype="FLOAT")  # channels differ
    y = load_audio(p)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == 16000
    # the mean of the channels is 0.75 x; away from the filter's edge effects it matches exactly
    expected = 0.75 * _tones(16000)
    assert np.abs(y[400:-400] - expected[400:-400]).max() < 5e-3
    assert len(load_audio(p, sample_rate=22050)) == 22050


def test_to_mono_accepts_both_layouts(speech):
    x = speech[:1000]
    assert np.allclose(to_mono(np.stack([x, x])), x)  # (channels, frames)
    assert np.allclose(to_mono(np.stack([x, x], axis=1)), x)  # (frames, channels)
    assert len(to_mono_16k(np.stack([x, x]), 8000)) == 2000


def test_speech_passes(speech):
    check_speech(speech, 16000)


def test_silence_raises():
    with pytest.raises(AudioError, match=r"prompt audio p.wav is silent \(peak -inf dBFS\): record or pick a clip"):
        check_speech(np.zeros(16000, np.float32), 16000, what="prompt audio p.wav")
    with pytest.raises(AudioError, match=r"is silent \(peak -8\d\.\d dBFS\)"):
        check_speech(np.full(16000, 5e-5, np.float32), 16000)


def test_too_short_raises(speech):
    with pytest.raises(AudioError, match=r"too short \(0\.10 s < 0\.3 s\)"):
        check_speech(speech[4000:5600], 16000)


def test_clipping_raises(speech):
    loud = np.clip(speech * 20, -1, 1)
    with pytest.raises(AudioError, match=r"heavily clipped \(\d+\.\d % of samples at full scale\)"):
        check_speech(loud, 16000)


def test_nan_and_inf_raise(speech):
    for bad in (np.nan, np.inf):
        x = speech.copy()
        x[100] = bad
        with pytest.raises(AudioError, match="NaN or Inf"):
            check_speech(x, 16000)


def test_save_wav_roundtrip_is_atomic(tmp_path, speech):
    p = tmp_path / "out" / "x.wav"
    save_wav(p, np.concatenate([speech, [1.5, -1.5]]), 16000)
    info = sf.info(p)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    y = load_audio(p)
    assert len(y) == len(speech) + 2
    assert np.abs(y[:-2] - speech).max() < 1e-4  # 16-bit quantisation only
    assert y[-2] == pytest.approx(1.0, abs=1e-4) and y[-1] == pytest.approx(-1.0, abs=1e-4)
    assert os.listdir(p.parent) == ["x.wav"]  # no temp file left behind


def test_save_wav_failure_keeps_old_file(tmp_path, speech):
    p = tmp_path / "x.wav"
    save_wav(p, speech, 16000)
    before = p.read_bytes()
    with pytest.raises(AudioError, match="NaN"):
        save_wav(p, np.full(10, np.nan, np.float32), 16000)
    with pytest.raises(Exception):
        save_wav(p, speech, -5)  # soundfile rejects the rate after the temp file exists
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.wav"]
