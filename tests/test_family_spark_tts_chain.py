"""Spark-TTS adapter on a tiny random-weight Qwen2 with a Spark-sized vocabulary and BiCodec token layout.

The checkpoint is written as upstream ships it: a root with ``LLM/`` (the HF folder), ``BiCodec/``
and ``config.yaml``. Token ids are this test's choice (the adapter reads them from the tokenizer):
Qwen2.5 specials at their real ids, Spark's control tokens from 151665, then 4096 global and 8192
semantic tokens as contiguous blocks, in a 166,000-row vocabulary.
"""
from __future__ import annotations

import numpy as np
import pytest

from family_chain import QWEN2_SPECIALS, run_chain, save_tiny_qwen2, word_level_tokenizer
from family_chain import skip_if_installed

SPARK_VOCAB = 166000
CONTROL_IDS = {"<|task_tts|>": 151665, "<|start_content|>": 151666, "<|end_content|>": 151667,
               "<|start_global_token|>": 151668, "<|end_global_token|>": 151669,
               "<|start_semantic_token|>": 151670, "<|end_semantic_token|>": 151671,
               "<|task_controllable_tts|>": 151672}
GLOBAL0 = 151680
SEM0 = GLOBAL0 + 4096
IM_END = 151645


def spark_tokenizer():
    named = {f"<|bicodec_global_{k}|>": GLOBAL0 + k for k in range(4096)}
    named.update({f"<|bicodec_semantic_{k}|>": SEM0 + k for k in range(8192)})
    return word_level_tokenizer(SPARK_VOCAB, {**QWEN2_SPECIALS, **CONTROL_IDS}, named,
                                split_pattern=r"<\|bicodec_(?:global|semantic)_\d+\|>",
                                eos="<|im_end|>", pad="<|endoftext|>")


def build_spark(out, layers: int = 4):
    save_tiny_qwen2(out / "LLM", SPARK_VOCAB, spark_tokenizer(), layers=layers, eos_token_id=IM_END,
                    bos_token_id=151643)
    (out / "BiCodec").mkdir()
    (out / "BiCodec" / "config.yaml").write_text("audio_tokenizer: {}\n")
    (out / "config.yaml").write_text("sample_rate: 16000\n")
    return out


@pytest.fixture(scope="module")
def spark_dir(tmp_path_factory):
    return build_spark(tmp_path_factory.mktemp("spark") / "ckpt")


@pytest.fixture(scope="module")
def spark(spark_dir):
    from spade_tts.families.registry import load_speech_lm

    return load_speech_lm(spark_dir)


def test_detection_root_and_llm_folder(spark, spark_dir):
    from spade_tts.families.registry import detect_family, matching_families

    assert detect_family(spark_dir) == "spark-tts" and detect_family(spark_dir / "LLM") == "spark-tts"
    assert matching_families(spark_dir) == ["spark-tts"]
    assert spark.layout.speech_start == SEM0 and spark.layout.speech_end == SEM0 + 8192
    assert spark.layout.stop_ids == (IM_END, 151671)


def test_not_detected_for_llasa_or_orpheus(tmp_path):
    from test_family_llasa import build_llasa
    from test_family_orpheus import build_orpheus

    from spade_tts.families.spark_tts import SparkTTSSpeechLM

    assert not SparkTTSSpeechLM.detect(build_orpheus(tmp_path / "orpheus"))
    assert not SparkTTSSpeechLM.detect(build_llasa(tmp_path / "llasa"))


def test_prompt_ids_equal_upstream_layout(spark):
    from spade_tts.families.spark_tts import pack_codes

    w = spark.tokenizer.convert_tokens_to_ids
    g, s = np.arange(32) * 100, np.array([5, 8191, 0])
    ids = spark.prompt_ids("hello there", "good night ", pack_codes(g, s))
    expected = ([151665, 151666, w("good"), w("night"), w("hello"), w("there"), 151667, 151668]
                + [GLOBAL0 + int(x) for x in g] + [151669, 151670, SEM0 + 5, SEM0 + 8191, SEM0])
    assert ids == expected
    # upstream tokenizes the whole prompt string: same ids
    text = ("<|task_tts|><|start_content|>good night hello there<|end_content|><|start_global_token|>"
            + "".join(f"<|bicodec_global_{x}|>" for x in g) + "<|end_global_token|><|start_semantic_token|>"
            + "".join(f"<|bicodec_semantic_{x}|>" for x in s))
    assert spark.tokenizer(text, add_special_tokens=False)["input_ids"] == expected
    no_text = spark.prompt_ids("hello there", "", pack_codes(g, s))
    assert no_text == expected[:2] + [w("hello"), w("there")] + expected[6:8 + 32 + 1]
    assert np.array_equal(spark.voice_globals, g)
    with pytest.raises(ValueError, match="global"):
        spark.prompt_ids("hello", "good", s)


def test_codes_round_trip_and_training_sequence(spark):
    from spade_tts.families.base import Utterance
    from spade_tts.families.spark_tts import pack_codes, unpack_codes

    rng = np.random.default_rng(0)
    codes = spark.random_codes(7, rng)
    g, s = unpack_codes(codes)
    assert codes.shape == (39,) and g.shape == (32,) and s.shape == (7,)
    ids = spark.codes_to_ids(codes)
    assert ids[:32] == (g + GLOBAL0).tolist() and ids[32:] == (s + SEM0).tolist()
    assert np.array_equal(spark.ids_to_codes(ids), s)  # global ids are not speech
    assert np.array_equal(spark.ids_to_codes(spark.codes_to_ids(s) + [IM_END, SEM0]), s)
    with pytest.raises(ValueError):
        unpack_codes(np.concatenate([s, g + 8192]))  # globals must come first
    with pytest.raises(ValueError):
        pack_codes(g[:5], s)
    target = Utterance("hello there", codes)
    prompt = Utterance("good night ", spark.random_codes(4, rng))
    seq, loss_from = spark.training_sequence(target, prompt)
    assert seq[: loss_from + 1] == spark.prompt_ids("hello there", "good night ", prompt.codes)
    assert seq[loss_from + 1:] == (s + SEM0).tolist() + [IM_END]
    seq, loss_from = spark.training_sequence(target)
    assert seq[loss_from] == 151669 and seq[loss_from + 1] == 151670 and seq[-1] == IM_END


def test_generation_emits_semantic_only(spark):
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids
    from spade_tts.families.spark_tts import pack_codes

    prompt = spark.prompt_ids("hello there", "good night", pack_codes(np.arange(32), [1, 2, 3]))
    new = generate_ids(spark, [prompt], GenerationConfig(temperature=1.0, top_p=1.0, seed=1, max_new_tokens=12,
                                                         min_new_tokens=12))[0]
    rows = set(spark.layout.head_rows().tolist())
    assert len(new) == 12 and all(i in rows for i in new)
    assert all(i != 151670 for i in new[1:])


def test_save_keeps_checkpoint_layout(spark, tmp_path):
    spark.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "LLM" / "config.json").is_file()
    assert (tmp_path / "out" / "BiCodec" / "config.yaml").is_file() and (tmp_path / "out" / "config.yaml").is_file()


def test_codec_missing_is_one_clear_line(spark):
    skip_if_installed("sparktts")
    with pytest.raises(ImportError, match="sparktts"):
        spark.decode_audio(np.concatenate([8192 + np.arange(32), [1, 2]]))


def test_spark_chain(tmp_path):
    got = run_chain(tmp_path, build_spark, "spark-tts")
    assert len(got["codes_shape"]) == 1 and got["codes_shape"][0] >= 12
    assert all(0 <= c < 8192 for c in got["codes"])
    assert (tmp_path / "distill" / "final" / "LLM" / "config.json").is_file()
    assert (tmp_path / "distill" / "final" / "BiCodec").is_dir()
