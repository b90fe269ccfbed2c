"""LLaSA adapter on a tiny random-weight Llama with LLaSA's real vocabulary (193,800) and token ids."""
from __future__ import annotations

import time

import numpy as np
import pytest

from family_chain import (LLAMA3_CHAT_TEMPLATE, LLAMA3_SPECIALS, LLAMA3_TEXT_VOCAB, run_chain, save_tiny_llama,
                          skip_if_installed, word_level_tokenizer)

LLASA_VOCAB = 193800
LLASA_SPECIALS = ["<|TEXT_GENERATION_START|>", "<|TEXT_GENERATION_END|>", "<|TEXT_UNDERSTANDING_START|>",
                  "<|TEXT_UNDERSTANDING_END|>", "<|SPEECH_GENERATION_START|>", "<|SPEECH_GENERATION_END|>",
                  "<|SPEECH_UNDERSTANDING_START|>", "<|SPEECH_UNDERSTANDING_END|>"]
S0 = LLAMA3_TEXT_VOCAB + len(LLASA_SPECIALS)  # 128264: <|s_0|>


def llasa_tokenizer():
    specials = {**LLAMA3_SPECIALS, **{name: LLAMA3_TEXT_VOCAB + i for i, name in enumerate(LLASA_SPECIALS)}}
    speech = {f"<|s_{k}|>": S0 + k for k in range(65536)}
    return word_level_tokenizer(LLASA_VOCAB, specials, speech, split_pattern=r"<\|s_\d+\|>",
                                chat_template=LLAMA3_CHAT_TEMPLATE, bos="<|begin_of_text|>", eos="<|eot_id|>")


def build_llasa(out, layers: int = 4):
    return save_tiny_llama(out, LLASA_VOCAB, llasa_tokenizer(), layers=layers, bos_token_id=128000,
                           eos_token_id=128009)


@pytest.fixture(scope="module")
def llasa_dir(tmp_path_factory):
    return build_llasa(tmp_path_factory.mktemp("llasa") / "ckpt")


@pytest.fixture(scope="module")
def llasa(llasa_dir):
    from spade_tts.families.registry import load_speech_lm

    return load_speech_lm(llasa_dir)


def test_layout_and_detection(llasa, llasa_dir):
    from spade_tts.families.registry import detect_family

    assert detect_family(llasa_dir) == "llasa"
    assert llasa.layout.speech_start == 128264 and llasa.layout.speech_end == LLASA_VOCAB
    assert llasa.layout.stop_ids == (128261,)  # <|SPEECH_GENERATION_END|>


def test_prompt_ids_equal_upstream_layout(llasa):
    """Hand-built: Llama-3 chat, user instruction + TU_START prompt-text target-text TU_END, assistant
    SG_START + prompt speech; and the same as upstream's string prompt through the chat template."""
    tok = llasa.tokenizer
    codes = np.array([0, 5, 65535])
    ids = llasa.prompt_ids("hello there", "good night", codes)
    w = tok.convert_tokens_to_ids
    expected = ([128000, 128006, w("user"), 128007] + [w(x) for x in "convert the text to speech:".split()]
                + [128258, w("good"), w("night"), w("hello"), w("there"), 128259, 128009,
                   128006, w("assistant"), 128007, 128260, S0 + 0, S0 + 5, S0 + 65535])
    assert ids[: 4] == expected[: 4]
    # "Convert" is not in the word list: it maps to <unk>; everything else is exact
    assert ids[4] == tok.unk_token_id and ids[5:] == expected[5:]
    upstream = tok.apply_chat_template(
        [{"role": "user", "content": "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>good night hello there"
                                     "<|TEXT_UNDERSTANDING_END|>"},
         {"role": "assistant", "content": "<|SPEECH_GENERATION_START|><|s_0|><|s_5|><|s_65535|>"}],
        tokenize=False, continue_final_message=True)
    assert tok(upstream, add_special_tokens=False)["input_ids"] == ids


def test_codes_ids_round_trip_and_errors(llasa):
    codes = np.array([0, 1, 65535, 42])
    ids = llasa.codes_to_ids(codes)
    assert ids == [S0, S0 + 1, S0 + 65535, S0 + 42]
    assert llasa.ids_to_codes(ids + [128261, S0 + 7]).tolist() == codes.tolist()  # cut at the stop id
    with pytest.raises(ValueError, match="65536"):
        llasa.codes_to_ids(np.array([65536]))


def test_training_sequence(llasa):
    from spade_tts.families.base import Utterance

    tgt, prm = Utterance("hello there", np.array([3, 4]), "a"), Utterance("good night", np.array([7]), "a")
    ids, loss_from = llasa.training_sequence(tgt, prm)
    assert ids[loss_from] == S0 + 7 and ids[loss_from + 1:] == [S0 + 3, S0 + 4, 128261]
    assert ids[: loss_from + 1] == llasa.prompt_ids("hello there", "good night", np.array([7]))


def test_codec_missing_is_one_clear_line(llasa):
    skip_if_installed("xcodec2")
    with pytest.raises(ImportError, match="pip install xcodec2"):
        llasa.decode_audio(np.array([1, 2, 3]))


def test_llasa_chain(tmp_path):
    start = time.time()
    got = run_chain(tmp_path, build_llasa, "llasa")
    assert len(got["codes_shape"]) == 1 and got["codes_shape"][0] == len(got["speech_ids"])
    assert all(0 <= c < 65536 for c in got["codes"])
    print(f"llasa chain {time.time() - start:.1f} s")
