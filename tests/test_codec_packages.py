"""The families' codec hooks through the real codec packages, each codec built at random initialisation by its own
constructor (no weights can be downloaded here), on real speech (flite).

Per family: audio -> ``encode_audio`` -> codes -> ``codes_to_ids`` -> ``ids_to_codes`` -> ``decode_audio``, with
the codec handed to the family as ``codec_model`` (CosyVoice 2: ``speech_tokenizer``); LLaSA runs both X-codec2
implementations, transformers' ``Xcodec2Model`` and, where it is installed by hand (setup.sh leaves it out), the
``xcodec2`` package. Random weights make the sound
meaningless, so what is checked is what the family relies on: code shapes and ranges, ids inside the family's
speech range, an exact ids -> codes round trip, and decoded audio that is finite, at the codec's sample rate, with
the codec's samples per frame. setup.sh installs the packages; each test says what is missing when one is not.
The last tests run the whole method (WLI, prune, compress with eval and a report) through each codec.

Not here, because their code is not on PyPI: Spark-TTS' BiCodec (``sparktts``) and CosyVoice 2's flow + HiFT decoder
(``cosyvoice``); tests/test_family_spark_tts.py and test_family_cosyvoice2.py run those hooks against stand-ins
with upstream's signatures.
"""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from spade_tts.audio import resample
from spade_tts.families import codec_hooks

# hubertsiuzdak/snac_24khz's config.json (what Orpheus decodes with): 19.8 M parameters, built as it is
SNAC_24KHZ = dict(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                  decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                  vq_strides=[4, 2, 1], noise=True, depthwise=True)
# IBM's DAC.speech.v1.0 24 kHz 1.5 kbps layout (hop 2*4*5*8 = 320, 2 codebooks of 1024), at small widths
DAC_SPEECH_SMALL = dict(encoder_dim=16, encoder_rates=[2, 4, 5, 8], decoder_dim=64, decoder_rates=[8, 5, 4, 2],
                        n_codebooks=2, codebook_size=1024, codebook_dim=8, sample_rate=24000)


def need(module: str, package: str, install: str = "bash setup.sh installs it"):
    """The codec package's module, or a skip naming what to install (an import can also fail with torchaudio's
    OSError when its bundled extension does not load: setup.sh handles that case)."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # any failure to import means the codec is not usable here
        first = (str(e).splitlines() or [""])[0][:160]
        pytest.skip(f"{package} is not usable here ({type(e).__name__}: {first}); {install}")


@pytest.fixture(scope="module")
def speech():
    """2.2 s of real speech (flite's slt voice, 16 kHz)."""
    from spade_tts.data.voices import VoiceUnavailable, synthesize

    try:
        utt = synthesize(["Glue the sheet to the dark blue background."], "flite_slt")[0]
    except VoiceUnavailable as e:
        pytest.skip(str(e))
    return np.asarray(utt.audio, dtype=np.float32), int(utt.sample_rate)


def load_family(tmp_path_factory, module: str, build: str, family: str):
    """The family's adapter loaded by its own from_pretrained from a tiny checkpoint with the real token layout."""
    from spade_tts.families.registry import load_speech_lm

    out = tmp_path_factory.mktemp(family) / "ckpt"
    out.mkdir()
    path = getattr(importlib.import_module(module), build)(out, layers=1) or out
    return load_speech_lm(path, family)


def in_speech_range(speech_lm, ids) -> bool:
    lo, hi = speech_lm.layout.speech_start, speech_lm.layout.speech_end
    return bool(ids) and all(lo <= i < hi for i in ids)


# -- Orpheus: SNAC 24 kHz --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def orpheus(tmp_path_factory):
    return load_family(tmp_path_factory, "test_family_orpheus", "build_orpheus", "orpheus")


@pytest.fixture(scope="module")
def snac_model():
    snac = need("snac", "snac")
    torch.manual_seed(0)
    return snac.SNAC(**SNAC_24KHZ).eval()


def test_orpheus_hooks_through_snac(orpheus, snac_model, speech):
    from spade_tts.families.orpheus import (AUDIO_START, CODEBOOK, END_OF_SPEECH, FRAME, SAMPLES_PER_FRAME,
                                            frames_to_levels)

    orpheus.codec_model = snac_model
    audio, sr = speech
    wav = resample(audio, sr, 24000)
    frames = math.ceil(len(wav) / SAMPLES_PER_FRAME)  # SNAC pads to hop 512 x the coarsest stride 4

    codes = orpheus.encode_audio(audio, sr)
    assert codes.shape == (frames, FRAME) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < CODEBOOK and len(np.unique(codes)) > 1
    # the frames hold exactly SNAC's own three levels, (1, T), (1, 2T), (1, 4T)
    with torch.no_grad():
        levels = snac_model.encode(torch.from_numpy(wav).reshape(1, 1, -1))
    assert [tuple(x.shape) for x in levels] == [(1, frames), (1, 2 * frames), (1, 4 * frames)]
    for mine, real in zip(frames_to_levels(codes), levels):
        assert np.array_equal(mine, real[0].numpy())

    ids = orpheus.codes_to_ids(codes)
    assert len(ids) == FRAME * frames and in_speech_range(orpheus, ids)
    assert all(AUDIO_START + (k % FRAME) * CODEBOOK <= i < AUDIO_START + (k % FRAME + 1) * CODEBOOK
               for k, i in enumerate(ids))  # position p of a frame lives in block p
    back = orpheus.ids_to_codes(ids + [END_OF_SPEECH])
    assert np.array_equal(back, codes)

    torch.manual_seed(1)  # SNAC's decoder adds noise: same seed, same draw
    out, rate = orpheus.decode_audio(back)
    torch.manual_seed(1)
    with torch.no_grad():
        direct = snac_model.decode(levels).reshape(-1).numpy()
    assert rate == 24000 and out.shape == (frames * SAMPLES_PER_FRAME,) and np.isfinite(out).all() and out.std() > 0
    np.testing.assert_allclose(out, direct, rtol=0, atol=1e-6)  # the 7-token frames decode as SNAC's own levels


def test_orpheus_loads_a_local_snac_folder(orpheus, snac_model, speech, tmp_path, monkeypatch):
    """The users' path: SPADE_SNAC names a snac_24khz folder, read by snac's own from_pretrained."""
    import json


    (tmp_path / "config.json").write_text(json.dumps(SNAC_24KHZ))
    torch.save(snac_model.state_dict(), tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(codec_hooks, "_LOADED", {})
    monkeypatch.setattr(orpheus, "codec_model", None)
    monkeypatch.setenv("SPADE_SNAC", str(tmp_path))
    loaded = orpheus.codec()
    assert loaded is not snac_model
    audio, sr = speech
    with monkeypatch.context() as m:
        m.setattr(orpheus, "codec_model", snac_model)
        want = orpheus.encode_audio(audio, sr)
    assert np.array_equal(orpheus.encode_audio(audio, sr), want)


# -- OuteTTS 1.0: DAC 24 kHz -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oute(tmp_path_factory):
    return load_family(tmp_path_factory, "test_family_outetts_chain", "build_oute", "outetts")


@pytest.fixture(scope="module")
def dac_model():
    dac = need("dac", "descript-audio-codec")
    need("pyloudnorm", "pyloudnorm")
    torch.manual_seed(0)
    return dac.DAC(**DAC_SPEECH_SMALL).eval()


def test_outetts_hooks_through_dac(oute, dac_model, speech):
    from spade_tts.families.outetts import PEAK_DBFS

    oute.codec_model = dac_model
    audio, sr = speech
    audio = np.concatenate([audio] * 3)  # > 5 s: upstream encodes 5 s windows
    n = len(resample(audio, sr, 24000))
    window = 5 * 24000
    frames = sum(math.ceil(min(window, n - a) / 320) for a in range(0, n, window))

    codes = oute.encode_audio(audio, sr)
    assert codes.shape == (2, frames) and codes.dtype == np.int64 and frames > 375
    assert codes.min() >= 0 and codes.max() < 1024 and len(np.unique(codes)) > 1

    ids = oute.codes_to_ids(codes)
    assert len(ids) == 2 * frames and in_speech_range(oute, ids)
    assert all(0 <= i - oute.c1 < 1024 for i in ids[0::2]) and all(0 <= i - oute.c2 < 1024 for i in ids[1::2])
    back = oute.ids_to_codes(ids + [oute.layout.stop_ids[0]])
    assert np.array_equal(back, codes)

    out, rate = oute.decode_audio(back)
    assert rate == 24000 and np.isfinite(out).all() and out.std() > 0
    assert 0 <= 320 * frames - len(out) < 320  # DAC: 320 samples a frame, less the decoder's edge
    assert np.abs(out).max() <= 10 ** (PEAK_DBFS / 20) + 1e-6  # normalized as upstream, peaks at -1 dBFS


def test_outetts_loads_a_local_dac_file(oute, dac_model, speech, tmp_path, monkeypatch):
    """The users' path: SPADE_DAC names the .pth file, read by DAC.load (its constructor arguments ride along)."""

    dac_model.save(str(tmp_path / "weights.pth"), package=False)  # weights + constructor arguments, as DAC ships
    monkeypatch.setattr(codec_hooks, "_LOADED", {})
    monkeypatch.setattr(oute, "codec_model", None)
    monkeypatch.setenv("SPADE_DAC", str(tmp_path / "weights.pth"))
    assert oute.codec() is not dac_model
    audio, sr = speech
    with monkeypatch.context() as m:
        m.setattr(oute, "codec_model", dac_model)
        want = oute.encode_audio(audio, sr)
    assert np.array_equal(oute.encode_audio(audio, sr), want)


# -- LLaSA: X-codec2 -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llasa(tmp_path_factory):
    return load_family(tmp_path_factory, "test_family_llasa", "build_llasa", "llasa")


@pytest.fixture(scope="module")
def xcodec2_model():
    """XCodec2Model built by its own constructor from its own config. That constructor downloads
    facebook/w2v-bert-2.0 (its semantic encoder) and that model's feature extractor: here they are random-init
    objects of the same classes, as X-codec2 uses them (width 1024, hidden state 16 read, so 16 layers)."""
    mx = need("xcodec2.modeling_xcodec2", "xcodec2", "setup.sh leaves it out (it needs torchtune and torchao, which "
              "make every transformers from_pretrained print CUDA-library errors); docs/families/llasa.md installs it")
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel
    from xcodec2.configuration_bigcodec import BigCodecConfig

    class SemanticModel:
        @staticmethod
        def from_pretrained(name, **kw):
            return Wav2Vec2BertModel(Wav2Vec2BertConfig(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16,
                                                        intermediate_size=256, **kw))

    class FeatureExtractor:
        @staticmethod
        def from_pretrained(name, **kw):
            return SeamlessM4TFeatureExtractor(feature_size=80, num_mel_bins=80, sampling_rate=16000, stride=2)

    mp = pytest.MonkeyPatch()
    mp.setattr(mx, "Wav2Vec2BertModel", SemanticModel)
    mp.setattr(mx, "AutoFeatureExtractor", FeatureExtractor)
    try:
        torch.manual_seed(0)
        model = mx.XCodec2Model(BigCodecConfig()).eval()
    finally:
        mp.undo()
    with torch.no_grad():  # at the default init every frame lands on FSQ's centre code; spread the codec's input
        model.fc_prior.weight.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def xcodec2_hf_model():
    """transformers' own port of X-codec2 (Xcodec2Model, the HKUSTAudio/xcodec2-hf layout) from its config: hop
    2*2*4*4*5 = 320 and FSQ levels 4^8 = 65536 as released, widths small, a 2-layer Wav2Vec2-BERT semantic encoder."""
    transformers = need("transformers", "transformers")
    need("torchaudio", "torchaudio")  # Xcodec2FeatureExtractor computes its fbank with torchaudio
    if not hasattr(transformers, "Xcodec2Model"):
        pytest.skip(f"transformers {transformers.__version__} has no Xcodec2Model")
    semantic = dict(model_type="wav2vec2-bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, output_hidden_size=64)
    config = transformers.Xcodec2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                                        encoder_hidden_size=8, quantization_dim=128, semantic_model_config=semantic)
    torch.manual_seed(0)
    model = transformers.Xcodec2Model(config).eval()
    with torch.no_grad():  # HF's init (std 0.02) puts every frame on FSQ's centre code; spread the quantizer's input
        model.quantizer.project_in.weight.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("codec", ["xcodec2_model", "xcodec2_hf_model"])
def test_llasa_hooks_through_xcodec2(llasa, codec, speech, request):
    from spade_tts.families.llasa import NUM_CODES, SAMPLES_PER_TOKEN

    llasa.codec_model = request.getfixturevalue(codec)
    audio, sr = speech
    n = len(resample(audio, sr, 16000))
    tokens = n // SAMPLES_PER_TOKEN + 1  # padded to the next whole code, one more when already whole

    codes = llasa.encode_audio(audio, sr)
    assert codes.shape == (tokens,) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < NUM_CODES and len(np.unique(codes)) > 1

    ids = llasa.codes_to_ids(codes)
    assert len(ids) == tokens and in_speech_range(llasa, ids)
    back = llasa.ids_to_codes(ids + [llasa.layout.stop_ids[0]])
    assert np.array_equal(back, codes)

    out, rate = llasa.decode_audio(back)
    assert rate == 16000 and out.shape == (tokens * SAMPLES_PER_TOKEN,) and np.isfinite(out).all()
    assert out.std() > 0


def test_llasa_loads_a_local_xcodec2_hf_folder(llasa, xcodec2_hf_model, speech, tmp_path, monkeypatch):
    """The users' path for the transformers format: SPADE_XCODEC2 names the folder, read by Xcodec2Model."""

    xcodec2_hf_model.save_pretrained(tmp_path)
    monkeypatch.setattr(codec_hooks, "_LOADED", {})
    monkeypatch.setattr(llasa, "codec_model", None)
    monkeypatch.setenv("SPADE_XCODEC2", str(tmp_path))
    assert type(llasa.codec()) is type(xcodec2_hf_model) and llasa.codec() is not xcodec2_hf_model
    audio, sr = speech
    with monkeypatch.context() as m:
        m.setattr(llasa, "codec_model", xcodec2_hf_model)
        want = llasa.encode_audio(audio, sr)
    assert np.array_equal(llasa.encode_audio(audio, sr), want)


# -- CosyVoice 2: the S3 speech tokenizer (v2, 25 Hz, 6561 codes) ----------------------------------------------
@pytest.fixture(scope="module")
def cosyvoice(tmp_path_factory):
    return load_family(tmp_path_factory, "test_family_cosyvoice2_chain", "build_cosyvoice", "cosyvoice2")


def test_cosyvoice2_speech_tokens_through_s3tokenizer(cosyvoice, speech):
    """speech_tokenizer_v2's structure (128 mel bins, stride 4, FSMN attention with 64-wide rotary heads, FSQ over
    3^8 = 6561 codes) at 2 layers of width 128. Decoding needs upstream's flow and HiFT, not on PyPI."""
    s3 = need("s3tokenizer", "s3tokenizer")
    from s3tokenizer.model_v2 import ModelConfig

    torch.manual_seed(0)
    cosyvoice.speech_tokenizer = s3.S3TokenizerV2(
        "speech_tokenizer_v2_25hz", ModelConfig(n_mels=128, n_audio_state=128, n_audio_head=2, n_audio_layer=2)).eval()
    audio, sr = speech
    n = len(resample(audio, sr, 16000))
    tokens = math.ceil((n // 160) / 4)  # 100 mel frames a second, two stride-2 convolutions: 25 tokens a second

    codes = cosyvoice.encode_audio(audio, sr)
    assert codes.shape == (tokens,) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 6561 and len(np.unique(codes)) > 1

    ids = cosyvoice.codes_to_ids(codes)
    assert len(ids) == tokens and in_speech_range(cosyvoice, ids)
    back = cosyvoice.ids_to_codes(ids + [cosyvoice.layout.stop_ids[0]])
    assert np.array_equal(back, codes)


# -- a missing local weights path is one line ------------------------------------------------------------------
@pytest.mark.parametrize("fixture, env", [("orpheus", "SPADE_SNAC"), ("oute", "SPADE_DAC"), ("llasa", "SPADE_XCODEC2")])
def test_missing_local_weights_is_one_line(fixture, env, request, tmp_path, monkeypatch):
    speech_lm = request.getfixturevalue(fixture)
    monkeypatch.setattr(codec_hooks, "_LOADED", {})
    monkeypatch.setattr(speech_lm, "codec_model", None)
    monkeypatch.setenv(env, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=rf"^{env}=\S+ does not exist: point {env} at ") as err:
        speech_lm.codec()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fixture, env, module, package", [
    ("orpheus", "SPADE_SNAC", "snac", "snac"),
    ("oute", "SPADE_DAC", "dac", "descript-audio-codec"),
    ("llasa", "SPADE_XCODEC2", "xcodec2.modeling_xcodec2", "xcodec2"),
])
def test_missing_package_is_one_line(fixture, env, module, package, request, monkeypatch):
    """Where the package is installed (setup.sh), the family tests' missing-package checks skip; hidden here, the
    hooks still say in one line what to install."""
    import sys

    speech_lm = request.getfixturevalue(fixture)
    monkeypatch.setattr(codec_hooks, "_LOADED", {})
    monkeypatch.setattr(speech_lm, "codec_model", None)
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"needs the `{package}` package .*: pip install {package} ") as err:
        speech_lm.decode_audio(speech_lm.random_codes(2, np.random.default_rng(0)))
    assert "\n" not in str(err.value)


# -- the whole method through each real codec: WLI, prune, compress (eval side by side) and a report --------------
def test_orpheus_speech_chain_through_snac(snac_model, tmp_path, monkeypatch):
    """`spade score/prune/compress --model CKPT --data M` on Orpheus, SNAC loaded from a local folder (SPADE_SNAC)
    by the family's own loading code."""
    import json

    from family_chain import run_speech_chain
    from test_family_orpheus import build_orpheus

    (tmp_path / "snac").mkdir()
    (tmp_path / "snac" / "config.json").write_text(json.dumps(SNAC_24KHZ))
    torch.save(snac_model.state_dict(), tmp_path / "snac" / "pytorch_model.bin")
    monkeypatch.setenv("SPADE_SNAC", str(tmp_path / "snac"))
    monkeypatch.setattr(codec_hooks, "_LOADED", {})
    ckpt = build_orpheus(tmp_path / "ckpt") or tmp_path / "ckpt"
    got = run_speech_chain(tmp_path / "chain", ckpt, "orpheus", max_new_tokens=42)  # 6 SNAC frames, 0.5 s
    assert got["eval"]["models"][0]["audio_seconds"] > 0


def test_outetts_speech_chain_through_dac(dac_model, tmp_path, monkeypatch):
    """The same on OuteTTS 1.0, DAC loaded from a local .pth (SPADE_DAC) by the family's own loading code."""
    from family_chain import run_speech_chain
    from test_family_outetts_chain import build_oute

    dac_model.save(str(tmp_path / "dac.pth"), package=False)
    monkeypatch.setenv("SPADE_DAC", str(tmp_path / "dac.pth"))
    monkeypatch.setattr(codec_hooks, "_LOADED", {})
    ckpt = build_oute(tmp_path / "ckpt") or tmp_path / "ckpt"
    got = run_speech_chain(tmp_path / "chain", ckpt, "outetts", max_new_tokens=60)
    assert got["eval"]["models"][0]["audio_seconds"] > 0


def test_llasa_speech_chain_through_xcodec2(xcodec2_hf_model, tmp_path, monkeypatch):
    """The same on LLaSA, X-codec2 in transformers' format loaded from a local folder (SPADE_XCODEC2)."""
    from family_chain import run_speech_chain
    from test_family_llasa import build_llasa

    xcodec2_hf_model.save_pretrained(tmp_path / "xcodec2")
    monkeypatch.setenv("SPADE_XCODEC2", str(tmp_path / "xcodec2"))
    monkeypatch.setattr(codec_hooks, "_LOADED", {})
    ckpt = build_llasa(tmp_path / "ckpt") or tmp_path / "ckpt"
    got = run_speech_chain(tmp_path / "chain", ckpt, "llasa", max_new_tokens=25)  # 0.5 s at 50 codes a second
    assert got["eval"]["models"][0]["audio_seconds"] > 0


def test_codec_params_count_the_loaded_codec(orpheus, snac_model, monkeypatch):
    """`spade eval`'s system size counts the codec the family decodes with."""
    monkeypatch.setattr(orpheus, "codec_model", snac_model)
    assert orpheus.codec_params() == sum(p.numel() for p in snac_model.parameters()) > 1e6
