"""Orpheus adapter on a tiny random-weight Llama with Orpheus' real vocabulary (156,940) and token ids."""
from __future__ import annotations

import numpy as np
import pytest

from family_chain import LLAMA3_SPECIALS, LLAMA3_TEXT_VOCAB, run_chain, save_tiny_llama, word_level_tokenizer
from family_chain import skip_if_installed

ORPHEUS_VOCAB = 156940
AUDIO = 128266


def orpheus_tokenizer():
    custom = {f"<custom_token_{n}>": LLAMA3_TEXT_VOCAB + n for n in range(ORPHEUS_VOCAB - LLAMA3_TEXT_VOCAB)}
    return word_level_tokenizer(ORPHEUS_VOCAB, dict(LLAMA3_SPECIALS), custom, split_pattern=r"<custom_token_\d+>",
                                bos="<|begin_of_text|>", eos="<|eot_id|>")


def build_orpheus(out, layers: int = 4):
    return save_tiny_llama(out, ORPHEUS_VOCAB, orpheus_tokenizer(), layers=layers, bos_token_id=128000,
                           eos_token_id=128009, pad_token_id=128263)


@pytest.fixture(scope="module")
def orpheus_dir(tmp_path_factory):
    return build_orpheus(tmp_path_factory.mktemp("orpheus") / "ckpt")


@pytest.fixture(scope="module")
def orpheus(orpheus_dir):
    from spade_tts.families.registry import load_speech_lm

    return load_speech_lm(orpheus_dir)


def test_detection_and_layout(orpheus, orpheus_dir):
    from spade_tts.families.registry import detect_family

    assert detect_family(orpheus_dir) == "orpheus"
    assert orpheus.layout.speech_start == AUDIO and orpheus.layout.speech_end == AUDIO + 7 * 4096
    assert orpheus.layout.stop_ids == (128258,)


def test_prompt_ids_equal_upstream_layout(orpheus):
    w = orpheus.tokenizer.convert_tokens_to_ids
    ids = orpheus.prompt_ids("hello there", voice="tara")
    assert ids == [128259, 128000, w("<unk>"), w("hello"), w("there"), 128009, 128260, 128261, 128257]
    frame = np.arange(7)[None]
    zero_shot = orpheus.prompt_ids("hello there", "good night", frame)
    assert zero_shot[:8] == [128259, 128000, w("good"), w("night"), 128009, 128260, 128261, 128257]
    assert zero_shot[8:15] == [AUDIO + p * 4096 + p for p in range(7)]
    assert zero_shot[15:17] == [128258, 128262] and zero_shot[17:] == orpheus.prompt_ids("hello there")


def test_seven_per_frame_round_trip(orpheus):
    from spade_tts.families.orpheus import frames_to_levels, levels_to_frames

    codes = np.random.default_rng(0).integers(0, 4096, size=(5, 7))
    ids = orpheus.codes_to_ids(codes)
    assert len(ids) == 35 and all(AUDIO + (k % 7) * 4096 <= i < AUDIO + (k % 7 + 1) * 4096 for k, i in enumerate(ids))
    assert ids[:7] == [AUDIO + p * 4096 + int(codes[0, p]) for p in range(7)]
    assert np.array_equal(orpheus.ids_to_codes(ids + ids[:3]), codes)  # trailing partial frame dropped
    levels = frames_to_levels(codes)
    assert [len(x) for x in levels] == [5, 10, 20]
    assert levels[1][:2].tolist() == [codes[0, 1], codes[0, 4]]
    assert levels[2][:4].tolist() == [codes[0, 2], codes[0, 3], codes[0, 5], codes[0, 6]]
    assert np.array_equal(levels_to_frames(levels), codes)
    with pytest.raises(ValueError, match="7-position"):
        orpheus.ids_to_codes([AUDIO + 4096] * 7)  # position 0 holding a position-1 token


def test_generation_follows_frame_positions(orpheus):
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids

    new = generate_ids(orpheus, [orpheus.prompt_ids("hello there")],
                       GenerationConfig(temperature=1.0, top_p=1.0, seed=3, max_new_tokens=21, min_new_tokens=21))[0]
    assert len(new) == 21
    assert all(AUDIO + (k % 7) * 4096 <= i < AUDIO + (k % 7 + 1) * 4096 for k, i in enumerate(new))
    assert orpheus.ids_to_codes(new).shape == (3, 7)


def test_codec_missing_is_one_clear_line(orpheus):
    skip_if_installed("snac")
    with pytest.raises(ImportError, match="pip install snac"):
        orpheus.decode_audio(np.zeros((1, 7), dtype=np.int64))


def test_orpheus_chain(tmp_path):
    got = run_chain(tmp_path, build_orpheus, "orpheus")
    assert got["codes_shape"] == [2, 7]  # 14 tokens = 2 SNAC frames
    assert all(0 <= c < 4096 for row in got["codes"] for c in row)
