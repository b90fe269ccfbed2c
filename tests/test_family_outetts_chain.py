"""OuteTTS 1.0 adapter on a tiny random-weight Llama with an OuteTTS-sized vocabulary and DAC token layout.

Token ids are this test's choice (the adapter reads them from the tokenizer): the Llama-3 text
vocabulary, OuteTTS' markers from 128256, ``<|c1_0..1023|>`` then ``<|c2_0..1023|>`` as adjacent blocks, then
the time tokens ``<|t_0.00|>``..``<|t_2.00|>`` and the feature tokens ``<|energy_0..100|>`` etc. Newlines vanish
in this word-level tokenizer (tests/test_family_outetts.py has a tokenizer where they are tokens).
"""
from __future__ import annotations

import numpy as np
import pytest

from family_chain import LLAMA3_SPECIALS, LLAMA3_TEXT_VOCAB, WORDS, run_chain, save_tiny_llama, word_level_tokenizer
from family_chain import skip_if_installed

OUTE_VOCAB = 134400
MARKERS = ["<|im_start|>", "<|im_end|>", "<|text_start|>", "<|text_end|>", "<|audio_start|>", "<|audio_end|>",
           "<|word_start|>", "<|word_end|>", "<|space|>", "<|code|>", "<|features|>", "<|global_features_start|>",
           "<|global_features_end|>"]
MARKER_IDS = {m: LLAMA3_TEXT_VOCAB + k for k, m in enumerate(MARKERS)}
C1 = LLAMA3_TEXT_VOCAB + 64
C2 = C1 + 1024
AUDIO_END, IM_END = MARKER_IDS["<|audio_end|>"], MARKER_IDS["<|im_end|>"]
VALUES = ([f"<|t_{k / 100:.2f}|>" for k in range(201)]
          + [f"<|{name}_{k}|>" for name in ("energy", "spectral_centroid", "pitch") for k in range(101)])
VALUE_IDS = {t: C2 + 1024 + k for k, t in enumerate(VALUES)}


def oute_tokenizer():
    named = {f"<|c1_{k}|>": C1 + k for k in range(1024)}
    named.update({f"<|c2_{k}|>": C2 + k for k in range(1024)})
    return word_level_tokenizer(OUTE_VOCAB, {**LLAMA3_SPECIALS, **MARKER_IDS, **VALUE_IDS}, named,
                                words=list(WORDS) + ["night."],
                                split_pattern=r"<\|c[12]_\d+\|>", bos="<|begin_of_text|>", eos="<|im_end|>")


def build_oute(out, layers: int = 4):
    return save_tiny_llama(out, OUTE_VOCAB, oute_tokenizer(), layers=layers, bos_token_id=128000,
                           eos_token_id=IM_END)


@pytest.fixture(scope="module")
def oute_dir(tmp_path_factory):
    return build_oute(tmp_path_factory.mktemp("oute") / "ckpt")


@pytest.fixture(scope="module")
def oute(oute_dir):
    from spade_tts.families.registry import load_speech_lm

    return load_speech_lm(oute_dir)


def test_detection_and_layout(oute, oute_dir, tmp_path):
    from test_family_llasa import build_llasa
    from test_family_orpheus import build_orpheus

    from spade_tts.families.outetts import OuteTTSSpeechLM
    from spade_tts.families.registry import matching_families

    assert matching_families(oute_dir) == ["outetts"]
    assert oute.layout.speech_start == C1 and oute.layout.speech_end == C1 + 2048
    assert oute.layout.stop_ids == (AUDIO_END, IM_END)
    assert not OuteTTSSpeechLM.detect(build_orpheus(tmp_path / "orpheus"))
    assert not OuteTTSSpeechLM.detect(build_llasa(tmp_path / "llasa"))


def timed(text, codes, feats=None):
    """An Utterance whose words share the codes' duration evenly (what a manifest's ``words`` give)."""
    from spade_tts.families.base import Utterance, Word

    words, dur = text.split(), codes.shape[1] / 75
    return Utterance(text, codes, words=[Word(w, dur * k / len(words), dur * (k + 1) / len(words), feats)
                                         for k, w in enumerate(words)])


def test_prompt_ids_equal_layout(oute):
    """Hand-built ids of the v1.0 completion prompt (newlines vanish in this tokenizer)."""
    w = oute.tokenizer.convert_tokens_to_ids
    m, v = MARKER_IDS, VALUE_IDS
    codes = np.array([[3, 1023], [7, 0]])
    feats = {"energy": 5, "spectral_centroid": 6, "pitch": 7}
    from spade_tts.families.base import Utterance, Word

    # "good" ends at int(0.03 * 75) = frame 2: both frames; "night." (the separator joins the last word) gets none
    speaker = Utterance("good night", codes, words=[Word("good", 0.0, 0.03, feats), Word("night", 0.03, 0.05, feats)])
    ids = oute.prompt_ids("hello there", prompt=speaker)
    word = [v["<|energy_5|>"], v["<|spectral_centroid_6|>"], v["<|pitch_7|>"], m["<|code|>"]]
    assert ids == [m["<|im_start|>"], m["<|text_start|>"], w("good"), w("night."), w("hello"), w("there"),
                   m["<|text_end|>"], m["<|audio_start|>"],
                   m["<|word_start|>"], w("good"), m["<|features|>"], v["<|t_0.03|>"], *word, C1 + 3, C2 + 7,
                   C1 + 1023, C2, m["<|word_end|>"],
                   m["<|word_start|>"], w("night."), m["<|features|>"], v["<|t_0.00|>"], *word, m["<|word_end|>"],
                   m["<|word_start|>"]]
    # the same ids as tokenizing the prompt string upstream writes
    text = ("<|im_start|>\n<|text_start|>good night. hello there<|text_end|>\n<|audio_start|>\n"
            "<|word_start|>good<|features|><|t_0.03|><|energy_5|><|spectral_centroid_6|><|pitch_7|><|code|>"
            "<|c1_3|><|c2_7|><|c1_1023|><|c2_0|><|word_end|>\n"
            "<|word_start|>night.<|features|><|t_0.00|><|energy_5|><|spectral_centroid_6|><|pitch_7|><|code|>"
            "<|word_end|>\n<|word_start|>")
    assert oute.tokenizer(text, add_special_tokens=False)["input_ids"] == ids


def test_interleaving_round_trip(oute):
    codes = np.random.default_rng(0).integers(0, 1024, size=(2, 5))
    ids = oute.codes_to_ids(codes)
    assert ids[:4] == [C1 + codes[0, 0], C2 + codes[1, 0], C1 + codes[0, 1], C2 + codes[1, 1]]
    assert np.array_equal(oute.ids_to_codes(ids + [C1 + 4, AUDIO_END]), codes)  # lone c1 dropped
    with pytest.raises(ValueError, match="alternate"):
        oute.ids_to_codes([C2, C1])
    with pytest.raises(ValueError, match="2, frames"):
        oute.codes_to_ids(codes.T)
    seq, loss_from = oute.training_sequence(timed("hello", codes))
    # the target part: global features, then one word block holding every frame, then the end markers
    assert seq[loss_from + 1] == MARKER_IDS["<|global_features_start|>"]
    assert seq[-2:] == [AUDIO_END, IM_END] and oute.ids_to_codes(seq[loss_from + 1:]).tolist() == codes.tolist()


def test_generation_follows_word_blocks(oute):
    """From a completion prompt the model writes word text, then <|features|>, time and feature tokens, <|code|>,
    then alternating c1/c2 frames (a random model rarely ends a word: 1 of 1025 choices)."""
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids

    prompt = oute.prompt_ids("hello there", prompt=timed("good night", np.zeros((2, 30), int)))
    assert prompt[-1] == MARKER_IDS["<|word_start|>"]
    with pytest.warns(UserWarning, match="max_new_tokens"):
        new = generate_ids(oute, [prompt], GenerationConfig(temperature=1.0, top_p=1.0, seed=2, max_new_tokens=40,
                                                            min_new_tokens=40))[0]
    assert len(new) == 40
    feat = new.index(MARKER_IDS["<|features|>"])
    assert 1 <= feat <= oute.max_word_tokens and all(i < 128000 for i in new[:feat])  # the word's text
    kinds = [oute.tokenizer.convert_ids_to_tokens(i).split("_")[0] for i in new[feat + 1: feat + 6]]
    assert kinds == ["<|t", "<|energy", "<|spectral", "<|pitch", "<|code|>"]
    frames = new[feat + 6:]
    assert all((C1 if k % 2 == 0 else C2) <= i < (C1 if k % 2 == 0 else C2) + 1024 for k, i in enumerate(frames))
    assert oute.ids_to_codes(new).shape == (2, len(frames) // 2)


def test_codec_missing_is_one_clear_line(oute):
    skip_if_installed("dac")
    with pytest.raises(ImportError, match="descript-audio-codec"):
        oute.decode_audio(np.zeros((2, 3), dtype=np.int64))


def test_oute_chain(tmp_path, monkeypatch):
    """The chain with a manifest that carries word timings (OuteTTS 1.0 sequences need them): the chain's rows
    (codes, text, speaker) get ``words`` spread over their frames, as a real manifest row would carry them."""
    import spade_tts.families.data as data

    read = data.read_manifest

    def with_words(path):
        rows = read(path)
        for row in rows:
            frames = np.load(row["codes"]).shape[1] if isinstance(row["codes"], str) else len(row["codes"][0])
            words, dur = row["text"].split(), frames / 75
            row.setdefault("words", [{"word": w, "start": dur * k / len(words), "end": dur * (k + 1) / len(words)}
                                     for k, w in enumerate(words)])
        return rows

    monkeypatch.setattr(data, "read_manifest", with_words)
    with pytest.warns(UserWarning, match="no audio"):  # codes-only rows: feature tokens are upstream's default 0
        got = run_chain(tmp_path, build_oute, "outetts", max_new_tokens=40, min_new_tokens=40)
    assert got["codes_shape"][0] == 2
    ids = got["new_ids"]
    c1 = [i - C1 for i in ids if C1 <= i < C1 + 1024]
    c2 = [i - C2 for i in ids if C2 <= i < C2 + 1024]
    frames = min(len(c1), len(c2))
    assert frames >= 1 and got["codes"] == [c1[:frames], c2[:frames]]  # upstream's extraction of the codes
    assert MARKER_IDS["<|code|>"] in ids and ids.index(MARKER_IDS["<|code|>"]) < ids.index(C1 + c1[0])
