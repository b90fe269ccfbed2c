"""Spark-TTS adapter against upstream's own behaviour, independently of the adapter's tests.

Oracles: the prompt string of ``SparkTTS.process_prompt`` (SparkAudio/Spark-TTS, cli/SparkTTS.py) and the
training sample of SparkAudio's data preparation (SparkVox: inputs ``<|task_tts|><|start_content|>TEXT
<|end_content|><|start_global_token|>G..<|end_global_token|>``, labels ``<|start_semantic_token|>S..<|im_end|>``),
both tokenized by the checkpoint's own tokenizer; a stand-in for ``sparktts.models.audio_tokenizer.BiCodecTokenizer``
with upstream's signatures and tensor shapes checks the codec hooks.

The checkpoint root is laid out as Spark-TTS-0.5B ships it: ``LLM/`` (HF Qwen2 folder), ``BiCodec/``,
``wav2vec2-large-xlsr-53/``, ``config.yaml``.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from family_chain import QWEN2_SPECIALS, save_tiny_qwen2, word_level_tokenizer
from spade_tts.families import codec_hooks

VOCAB = 166000
CONTROLS = ["<|task_tts|>", "<|start_content|>", "<|end_content|>", "<|start_global_token|>", "<|end_global_token|>",
            "<|start_semantic_token|>", "<|end_semantic_token|>", "<|task_controllable_tts|>"]
G0 = 151700  # ids are this test's choice: the adapter must read them from the tokenizer
S0 = G0 + 4096


def build_spark_root(out, layers: int = 4):
    named = {f"<|bicodec_global_{k}|>": G0 + k for k in range(4096)}
    named.update({f"<|bicodec_semantic_{k}|>": S0 + k for k in range(8192)})
    specials = {**QWEN2_SPECIALS, **{c: 151665 + i for i, c in enumerate(CONTROLS)}}
    tok = word_level_tokenizer(VOCAB, specials, named, split_pattern=r"<\|bicodec_(?:global|semantic)_\d+\|>",
                               eos="<|im_end|>", pad="<|endoftext|>")
    save_tiny_qwen2(out / "LLM", VOCAB, tok, layers=layers, eos_token_id=151645, bos_token_id=151643, seed=5)
    for sub in ("BiCodec", "wav2vec2-large-xlsr-53"):
        (out / sub).mkdir()
        (out / sub / "config.json").write_text("{}\n")
    (out / "config.yaml").write_text("sample_rate: 16000\n")
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_spark_root(tmp_path_factory.mktemp("spark") / "Spark-TTS-0.5B")


@pytest.fixture(scope="module")
def spark(root):
    from spade_tts.families.registry import load_speech_lm

    return load_speech_lm(root)


def adapter_module():
    """The module of the registered spark-tts adapter (its pack_codes/unpack_codes), whatever its file name."""
    import importlib

    from spade_tts.families.registry import family_class

    return importlib.import_module(family_class("spark-tts").__module__)


def tokens(kind, codes):
    return "".join(f"<|bicodec_{kind}_{int(c)}|>" for c in codes)


def encode(spark, text):
    return spark.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_prompt_ids_are_process_prompts_string(spark):
    pack_codes = adapter_module().pack_codes
    g = np.arange(32) * 100 % 4096
    s = np.array([0, 8191, 17, 4000])
    with_text = ("<|task_tts|><|start_content|>" + "good night " + "hello there" + "<|end_content|>"
                 "<|start_global_token|>" + tokens("global", g) + "<|end_global_token|>"
                 "<|start_semantic_token|>" + tokens("semantic", s))
    assert spark.prompt_ids("hello there", "good night ", pack_codes(g, s)) == encode(spark, with_text)
    no_text = ("<|task_tts|><|start_content|>hello there<|end_content|><|start_global_token|>" + tokens("global", g)
               + "<|end_global_token|>")
    assert spark.prompt_ids("hello there", "", pack_codes(g, s)) == encode(spark, no_text)


def test_training_sequence_is_sparkvox_sample(spark):
    from spade_tts.families.base import Utterance

    pack_codes = adapter_module().pack_codes
    g, s = np.arange(32) + 7, np.array([5, 6, 8191])
    inputs = encode(spark, "<|task_tts|><|start_content|>the quick brown fox<|end_content|><|start_global_token|>"
                    + tokens("global", g) + "<|end_global_token|>")
    labels = encode(spark, "<|start_semantic_token|>" + tokens("semantic", s) + "<|im_end|>")
    seq, loss_from = spark.training_sequence(Utterance("the quick brown fox", pack_codes(g, s)))
    assert seq == inputs + labels and loss_from == len(inputs) - 1
    # the generation side agrees: <|im_end|> stops, <|end_semantic_token|> (what fine-tuned variants emit) stops too
    im_end, end_sem = encode(spark, "<|im_end|>")[0], encode(spark, "<|end_semantic_token|>")[0]
    assert {im_end, end_sem} <= set(spark.layout.stop_ids)
    assert (spark.layout.speech_start, spark.layout.speech_end) == (S0, S0 + 8192)


def fake_sparktts(monkeypatch, spark, calls):
    class BiCodecTokenizer:  # upstream sparktts/models/audio_tokenizer.py
        def __init__(self, model_dir, device=None, **kw):
            calls.append(("init", Path(model_dir)))
            self.device = device

        def tokenize(self, audio_path: str):
            import soundfile as sf

            wav, sr = sf.read(audio_path)  # upstream: load_audio(path, sampling_rate=16000)
            calls.append(("tokenize", sr, len(wav)))
            n = len(wav) // 320
            return torch.arange(32).reshape(1, 1, 32), (torch.arange(n) * 37 % 8192).reshape(1, n)

        def detokenize(self, global_tokens, semantic_tokens):
            # SparkTTS.inference passes global (1, 32) and semantic (1, T); detokenize adds the middle axis itself
            assert global_tokens.shape == (1, 32) and semantic_tokens.dim() == 2 and semantic_tokens.shape[0] == 1
            calls.append(("detokenize", global_tokens.flatten().tolist(), semantic_tokens.flatten().tolist()))
            # 20 ms of a tone per token whose pitch follows the token, so different tokens sound different
            t = np.arange(320) / 16000
            return np.concatenate([0.3 * np.sin(2 * np.pi * (100 + int(k) % 700) * t)
                                   for k in semantic_tokens.flatten()]).astype(np.float32)

    mod = types.ModuleType("sparktts.models.audio_tokenizer")
    mod.BiCodecTokenizer = BiCodecTokenizer
    pkgs = [(name, types.ModuleType(name)) for name in ("sparktts", "sparktts.models")]
    for name, m in pkgs + [("sparktts.models.audio_tokenizer", mod)]:
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.setattr(codec_hooks, "_LOADED", {})  # no codec loaded by an earlier test


def test_codec_hooks_with_upstream_bicodec(spark, root, monkeypatch):
    unpack_codes = adapter_module().unpack_codes
    calls = []
    fake_sparktts(monkeypatch, spark, calls)
    codes = spark.encode_audio(np.zeros(48000, dtype=np.float32), 48000)  # resampled to 16 kHz for BiCodec
    assert calls[0] == ("init", Path(root)) and calls[1] == ("tokenize", 16000, 16000)
    g, s = unpack_codes(codes)
    assert g.tolist() == list(range(32)) and len(s) == 50
    audio, sr = spark.decode_audio(codes)
    assert sr == 16000 and audio.shape == (50 * 320,)
    assert calls[-1] == ("detokenize", list(range(32)), s.tolist())


def test_spark_tts_speech_chain_through_a_bicodec_stand_in(tmp_path, monkeypatch):
    """`spade score/prune/compress --model CKPT --data M` on Spark-TTS, BiCodec being a stand-in with upstream's
    signature (upstream's `sparktts` code is not on PyPI); the pruned and distilled LLM/ folders find the
    checkpoint root's BiCodec through SPADE_SPARK_ROOT."""
    from family_chain import run_speech_chain

    fake_sparktts(monkeypatch, None, [])
    ckpt = build_spark_root(tmp_path / "Spark-TTS-0.5B")
    monkeypatch.setenv("SPADE_SPARK_ROOT", str(ckpt))
    got = run_speech_chain(tmp_path / "chain", ckpt, "spark-tts", max_new_tokens=25)  # 0.5 s at 50 tokens a second
    assert got["eval"]["models"][0]["audio_seconds"] > 0
