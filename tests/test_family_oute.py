"""OuteTTS 1.0 adapter on a tiny random-weight Llama with an OuteTTS-sized vocabulary and DAC token layout.

Token ids are this test's choice (the adapter reads them from the tokenizer): the Llama-3 text
vocabulary, OuteTTS' markers from 128256, ``<|c1_0..1023|>`` then ``<|c2_0..1023|>`` as adjacent blocks.
"""
from __future__ import annotations

import numpy as np
import pytest

from family_chain import LLAMA3_SPECIALS, LLAMA3_TEXT_VOCAB, WORDS, run_chain, save_tiny_llama, word_level_tokenizer
from family_chain import skip_if_installed

OUTE_VOCAB = 134400
MARKERS = ["<|im_start|>", "<|im_end|>", "<|text_start|>", "<|text_end|>", "<|audio_start|>", "<|audio_end|>",
           "<|word_start|>", "<|word_end|>", "<|space|>", "<|code|>", "<|features|>"]
MARKER_IDS = {m: LLAMA3_TEXT_VOCAB + k for k, m in enumerate(MARKERS)}
C1 = LLAMA3_TEXT_VOCAB + 64
C2 = C1 + 1024
AUDIO_END, IM_END = MARKER_IDS["<|audio_end|>"], MARKER_IDS["<|im_end|>"]


def oute_tokenizer():
    named = {f"<|c1_{k}|>": C1 + k for k in range(1024)}
    named.update({f"<|c2_{k}|>": C2 + k for k in range(1024)})
    return word_level_tokenizer(OUTE_VOCAB, {**LLAMA3_SPECIALS, **MARKER_IDS}, named, words=list(WORDS) + ["night."],
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

    from spade_tts.families.oute import OuteSpeechLM
    from spade_tts.families.registry import matching_families

    assert matching_families(oute_dir) == ["outetts"]
    assert oute.layout.speech_start == C1 and oute.layout.speech_end == C1 + 2048
    assert oute.layout.stop_ids == (AUDIO_END, IM_END)
    assert not OuteSpeechLM.detect(build_orpheus(tmp_path / "orpheus"))
    assert not OuteSpeechLM.detect(build_llasa(tmp_path / "llasa"))


def test_prompt_ids_equal_layout(oute):
    w = oute.tokenizer.convert_tokens_to_ids
    m = MARKER_IDS
    codes = np.array([[3, 1023], [7, 0]])
    ids = oute.prompt_ids("hello there", "good night", codes)
    assert ids == [m["<|im_start|>"], m["<|text_start|>"], w("good"), w("night."), w("hello"), w("there"),
                   m["<|text_end|>"], m["<|audio_start|>"], C1 + 3, C2 + 7, C1 + 1023, C2]
    # the same ids as tokenizing the prompt string upstream writes (newlines vanish in this word-level tokenizer)
    text = ("<|im_start|>\n<|text_start|>good night. hello there<|text_end|>\n"
            "<|audio_start|>\n<|c1_3|><|c2_7|><|c1_1023|><|c2_0|>")
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
    from spade_tts.families.base import Utterance

    seq, loss_from = oute.training_sequence(Utterance("hello", codes))
    assert seq[loss_from + 1:] == ids + [AUDIO_END, IM_END]


def test_generation_alternates_codebooks(oute):
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids

    new = generate_ids(oute, [oute.prompt_ids("hello there")],
                       GenerationConfig(temperature=1.0, top_p=1.0, seed=2, max_new_tokens=10, min_new_tokens=10))[0]
    assert len(new) == 10
    assert all((C1 if k % 2 == 0 else C2) <= i < (C1 if k % 2 == 0 else C2) + 1024 for k, i in enumerate(new))
    assert oute.ids_to_codes(new).shape == (2, 5)


def test_codec_missing_is_one_clear_line(oute):
    skip_if_installed("dac")
    with pytest.raises(ImportError, match="descript-audio-codec"):
        oute.decode_audio(np.zeros((2, 3), dtype=np.int64))


def test_oute_chain(tmp_path):
    got = run_chain(tmp_path, build_oute, "outetts")
    assert got["codes_shape"] == [2, 7]  # 14 tokens = 7 DAC frames
    assert all(0 <= c < 1024 for row in got["codes"] for c in row)
