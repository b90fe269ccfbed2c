
import numpy as np
import pytest
import soundfile as sf

from spade_tts.data.build import DataConfig, build_corpus, plan_chunks, read_jsonl
from spade_tts.data.sentences import extract_sentences, load_sentences, split_sentences


def test_sentence_filter_keeps_plain_sentences_only():
    text = "The cat sat on the mat today.\n%\nGNU is NOT unix, they said.\n%\nToo short.\n%\nCall 555 1234 now please ok."
    assert extract_sentences(text) == ["The cat sat on the mat today."]


def test_text_source_is_large_and_split_is_disjoint_and_seeded():
    sents = load_sentences()
    assert len(sents) >= 5000
    assert all(4 <= len(s.split()) <= 20 for s in sents)
    train, held = split_sentences(sents, 200, seed=0)
    assert not set(train) & set(held) and len(held) == 200
    assert split_sentences(sents, 200, seed=0)[1] == held
    assert split_sentences(sents, 200, seed=1)[1] != held


def test_tiny_corpus_manifests_audio_and_phones(tiny_corpus):
    out, cfg, summary = tiny_corpus
    train = read_jsonl(out / "manifests" / "train.jsonl")
    held = read_jsonl(out / "manifests" / "heldout.jsonl")
    assert len(train) == 20 and len(held) == 8 and summary["train"]["utterances"] == 20
    assert not {r["text"] for r in train} & {r["text"] for r in held}
    for row in train + held:
        audio, sr = sf.read(out / row["audio"])
        assert sr == 16000 and audio.ndim == 1
        assert abs(len(audio) / sr - row["seconds"]) < 1e-3
        ends = [e for _, e in row["phones"]]
        assert row["phones"][0][0] == "pau" and ends == sorted(ends) and ends[-1] <= row["seconds"] + 1e-3
        assert np.abs(audio).max() > 0.5  # peak-normalised speech, not silence


def test_rebuild_is_resumable_and_does_no_work_twice(tiny_corpus):
    out, cfg, _ = tiny_corpus
    part = sorted((out / "parts").glob("*.jsonl"))[0]
    stamp = part.stat().st_mtime_ns
    # A lost chunk (as after a crash) is rebuilt; finished ones are left alone.
    lost = sorted((out / "parts").glob("*.jsonl"))[-1]
    lost_rows = lost.read_text()
    lost.unlink()
    build_corpus(cfg)
    assert part.stat().st_mtime_ns == stamp
    assert lost.read_text() == lost_rows  # deterministic: same sentences, same phones
    assert len(read_jsonl(out / "manifests" / "train.jsonl")) == 20


def test_plan_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown voice"):
        plan_chunks(DataConfig(out_dir=str(tmp_path), voices=["nobody"], train_per_voice=2))
    with pytest.raises(ValueError, match="exceeds"):
        plan_chunks(DataConfig(out_dir=str(tmp_path), voices=["flite_slt"], train_per_voice=10**7))


def test_voices_give_phone_timings_and_clear_errors():
    from spade_tts.data.voices import VoiceUnavailable, festival_batch, g2p, synthesize

    utt = synthesize(["The cat sat on the mat."], "festival_kal")[0]
    assert utt.sample_rate == 16000 and [p for p, _ in utt.phones][:4] == ["pau", "dh", "ax", "k"]
    assert g2p("The cat sat.")[:5] == ["pau", "dh", "ax", "k", "ae"]
    with pytest.raises(ValueError, match="unknown voice"):
        synthesize(["Hello there, friend."], "nobody")
    with pytest.raises(VoiceUnavailable, match="apt-get install festival"):
        festival_batch(["Hello there, friend."], "voice_not_installed")
