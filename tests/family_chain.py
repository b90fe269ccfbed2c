"""The done-when chain every LLM-TTS family adapter must pass, and builders for tiny real-layout checkpoints.

``run_chain(tmp_path, build_checkpoint_fn, family)`` takes a function that writes a checkpoint
folder of the family (real config class, real vocabulary size and special-token ids, tiny width,
random weights) and runs: detection -> teacher-forced importance (``spade score`` for families) ->
prune to half by ``tf_loss_rise`` -> the data hook (manifest of precomputed codes -> token dataset)
-> 2 distillation steps -> final checkpoint -> reload in a fresh Python process -> greedy generation
restricted to speech/stop ids -> codes. It asserts what holds for every family and returns what
it saw, so that a family's test can assert its own shapes.

``word_level_tokenizer`` and ``save_tiny_llama`` build HF folders the way the families ship them,
without any download: a word-level tokenizer padded to the real text vocabulary, with the family's
special tokens at their real ids.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORDS = ("hello there good night the quick brown fox jumps over lazy dog a an to of and is it this that "
         "convert text speech speech: user assistant system say once more please thank you").split()
LLAMA3_TEXT_VOCAB = 128256
LLAMA3_SPECIALS = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
                   "<|end_header_id|>": 128007, "<|eot_id|>": 128009}
# the Llama-3 chat format (what the Llama-3.x Instruct tokenizers render), without a system prompt
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def word_level_tokenizer(vocab_size: int, specials: dict[str, int], named: dict[str, int] | None = None,
                         words=WORDS, split_pattern: str | None = None, chat_template: str | None = None,
                         bos: str | None = None, eos: str | None = None, pad: str | None = None):
    """An HF fast tokenizer over ``vocab_size`` ids: ``words`` from id 1 (``<unk>`` is 0), ``specials``
    (added special tokens) and ``named`` (plain vocabulary entries, e.g. speech tokens) at the given
    ids, ``<|dummy_N|>`` everywhere else. ``split_pattern`` isolates named tokens written in text."""
    from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0}
    for w in words:
        vocab.setdefault(w, len(vocab))
    fixed = {**(named or {}), **specials}
    taken = set(fixed.values())
    assert not taken & set(vocab.values()), "fixed ids collide with the word list"
    vocab.update(fixed)
    used = set(vocab.values())
    for i in range(vocab_size):
        if i not in used:
            vocab[f"<|dummy_{i}|>"] = i
    assert len(vocab) == vocab_size and max(vocab.values()) == vocab_size - 1
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    pre = [pre_tokenizers.WhitespaceSplit()]
    if split_pattern:
        pre.insert(0, pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token=eos,
                                   pad_token=pad, chat_template=chat_template)


def save_tiny_llama(out: Path, vocab_size: int, tokenizer, layers: int = 4, hidden: int = 32,
                    tie: bool = True, seed: int = 0, **config) -> Path:
    """A random-weight LlamaForCausalLM of the real config class at tiny width, saved with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                      max_position_embeddings=131072, tie_word_embeddings=tie, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0,
                                    "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}, **config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # HF's init (std 0.02) makes every logit ~0; spread them so greedy is not a tie
        model.get_input_embeddings().weight.normal_(0, 0.5)
    out = Path(out)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out


def save_tokenizer(tokenizer, out: Path) -> None:
    """save_pretrained, naming the plain fast-tokenizer class: otherwise AutoTokenizer picks the model type's
    own class (Qwen2Tokenizer, ...), which rebuilds the pipeline instead of reading tokenizer.json as saved."""
    tokenizer.save_pretrained(out)
    cfg_path = Path(out) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


_CHILD = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np, torch
    torch.set_num_threads(1)
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids
    from spade_tts.families.registry import detect_family, load_speech_lm
    from spade_tts.pruning.layers import decoder_layers
    a = json.loads(sys.argv[1])
    s = load_speech_lm(a["path"], a["family"], family_config=a["family_config"])
    prompt = s.prompt_ids(a["text"], a["prompt_text"], np.load(a["prompt_codes"]) if a["prompt_codes"] else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = generate_ids(s, [prompt], GenerationConfig(greedy=True, max_new_tokens=a["max_new_tokens"],
                                                          min_new_tokens=a["min_new_tokens"]))[0]
    speech = s.speech_ids(new)
    codes = s.ids_to_codes(new)
    print(json.dumps({"family": s.family, "layers": len(decoder_layers(s.lm)), "new_ids": new,
                      "head_rows": s.layout.head_rows().tolist(), "stop_ids": list(s.layout.stop_ids),
                      "speech_ids": speech, "codes": np.asarray(codes).tolist(),
                      "codes_shape": list(np.asarray(codes).shape),
                      "round_trip": s.codes_to_ids(codes) if np.asarray(codes).size else [],
                      "detected": detect_family(a["path"]) if not a["family_config"] else None}))
""")


def run_chain(tmp_path: Path, build_checkpoint_fn: Callable[[Path], Path | None], family: str, *,
              family_config: str | None = None, frames: int = 6, max_new_tokens: int = 14,
              min_new_tokens: int = 14, distill_steps: int = 2) -> dict:
    """The whole chain on a tiny checkpoint of ``family``; returns what the fresh process generated."""
    from spade_tts.distill.trainer import DistillConfig, distill
    from spade_tts.families.data import FamilyDataConfig, build_family_dataset
    from spade_tts.families.registry import detect_family, load_speech_lm
    from spade_tts.importance.layer_importance import ScoreConfig, score_layers
    from spade_tts.pruning.layers import decoder_layers
    from spade_tts.pruning.prune import PruneConfig, prune_checkpoint

    tmp_path = Path(tmp_path)
    ckpt = build_checkpoint_fn(tmp_path / "full") or tmp_path / "full"
    ckpt = Path(ckpt)
    if family_config is None:
        assert detect_family(ckpt) == family
    speech = load_speech_lm(ckpt, family, family_config=family_config)
    depth = len(decoder_layers(speech.lm))

    # a manifest of precomputed codes: 2 speakers x 2 utterances (each target gets a same-speaker prompt)
    rng = np.random.default_rng(0)
    (tmp_path / "codes").mkdir(exist_ok=True)
    texts = ["hello there", "good night", "the quick brown fox", "thank you"]
    lines = []
    for i, text in enumerate(texts):
        np.save(tmp_path / "codes" / f"{i}.npy", speech.random_codes(frames, rng))
        lines.append(json.dumps({"codes": f"codes/{i}.npy", "text": text, "speaker": f"spk{i % 2}"}))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")

    fam = {"family": family, "family_config": family_config or ""}
    scores = score_layers(ScoreConfig(model=str(ckpt), data=str(manifest), out_dir=str(tmp_path / "score"),
                                      wli=False, tf_batch=4, **fam))
    assert scores["num_layers"] == depth and len(scores["layers"]) == depth
    assert all(np.isfinite(row["tf_loss_rise"]) for row in scores["layers"])

    pruned = prune_checkpoint(PruneConfig(model=str(ckpt), scores=str(tmp_path / "score" / "scores.json"),
                                          out=str(tmp_path / "pruned"), ratio=0.5, metric="tf_loss_rise", **fam))
    record = json.loads((pruned / "spade_pruning.json").read_text())
    assert record["teacher_layers"] == depth and len(record["kept"]) == depth // 2 and record["family"] == family

    data = build_family_dataset(speech, FamilyDataConfig(manifest=str(manifest), out=str(tmp_path / "data")))
    del speech
    final = distill(DistillConfig(teacher=str(ckpt), student=str(pruned), dataset=str(data), data_fraction=1.0,
                                  steps=distill_steps, batch_size=2, warmup=1, save_every=distill_steps, log_every=1,
                                  out_dir=str(tmp_path / "distill"), device="cpu", **fam))
    log = [json.loads(x) for x in (tmp_path / "distill" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == distill_steps and all(np.isfinite(r["loss"]) for r in log)

    args = {"path": str(final), "family": family, "family_config": family_config, "text": "hello there",
            "prompt_text": "good night", "prompt_codes": str(tmp_path / "codes" / "1.npy"),
            "max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["family"] == family and got["layers"] == depth // 2
    if family_config is None:
        assert got["detected"] == family
    rows = set(got["head_rows"])
    assert got["new_ids"] and all(i in rows for i in got["new_ids"]), "generation emitted a non-speech token"
    stops = set(got["stop_ids"])
    assert all(i not in stops for i in got["new_ids"][:-1]), "tokens after a stop id"
    assert got["codes_shape"][0] > 0, "no codes came out"
    assert got["round_trip"] == got["speech_ids"][: len(got["round_trip"])]
    got.update(scores=scores, record=record, final=str(final), checkpoint=str(ckpt))
    return got


QWEN2_TEXT_VOCAB = 151643
QWEN2_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


def save_tiny_qwen2(out: Path, vocab_size: int, tokenizer, layers: int = 4, hidden: int = 32,
                    tie: bool = True, seed: int = 0, **config) -> Path:
    """A random-weight Qwen2ForCausalLM of the real config class at tiny width, saved with its tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=32768, tie_word_embeddings=tie, rope_theta=1000000.0, **config)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # spread the logits so greedy decoding is not a tie
        model.get_input_embeddings().weight.normal_(0, 0.5)
    out = Path(out)
    model.save_pretrained(out)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)
    return out


def skip_if_installed(module: str) -> None:
    """A codec-missing test can only show its error where the codec package is absent."""
    import importlib.util

    import pytest

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here, so the missing-package error cannot be shown")


SPEECH_TEXTS = ("hello there", "good night", "the quick brown fox", "thank you")


def audio_manifest(folder: Path, voices=("flite_slt", "flite_rms"), texts=SPEECH_TEXTS, words: bool = False) -> Path:
    """A manifest of real speech: every text in every voice (offline flite), 16 kHz wavs, one speaker a voice.
    ``words``: word timings too (OuteTTS 1.0 needs them), spread evenly over the speech (a test's stand-in for
    the Whisper word timestamps upstream uses)."""
    from spade_tts.audio import save_wav, to_mono_16k
    from spade_tts.data.voices import synthesize

    folder = Path(folder)
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for voice in voices:
        for i, (text, utt) in enumerate(zip(texts, synthesize(list(texts), voice))):
            name = f"wavs/{voice}-{i}.wav"
            save_wav(folder / name, to_mono_16k(utt.audio, utt.sample_rate), 16000)
            row = {"audio": name, "text": text, "speaker": voice, "id": f"{voice}-{i}"}
            if words:
                spoken, seconds = text.split(), len(utt.audio) / utt.sample_rate
                step = seconds / len(spoken)
                row["words"] = [{"word": w, "start": round(k * step, 3), "end": round((k + 1) * step, 3)}
                                for k, w in enumerate(spoken)]
            lines.append(json.dumps(row))
    manifest = folder / "speech.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def with_identity_layer(ckpt: Path, out: Path, family: str, layer: int = 1, family_config: str | None = None) -> Path:
    """The checkpoint with ``layer``'s attention and MLP output projections zeroed: an exact identity, so
    skipping it must change nothing (the family's own save_pretrained writes it)."""
    import torch

    from spade_tts.families.registry import load_speech_lm
    from spade_tts.pruning.layers import decoder_layers

    speech = load_speech_lm(ckpt, family, family_config=family_config)
    block = decoder_layers(speech.lm)[layer]
    with torch.no_grad():
        for proj in (block.self_attn.o_proj, block.mlp.down_proj):
            proj.weight.zero_()
            if getattr(proj, "bias", None) is not None:
                proj.bias.zero_()
    speech.save_pretrained(out)
    return Path(out)


def run_speech_chain(tmp_path, ckpt, family: str, family_config: str | None = None, max_new_tokens: int = 24) -> dict:
    """SPADE on a family's checkpoint through its codec, as a user runs it: `spade score --model CKPT --data M`
    (WLI with an exact-identity layer, beside the proxies), `spade prune`, and `spade compress --model CKPT --data M
    --quick` (which evaluates full, pruned and distilled models side by side, as `spade eval` does) ending with a
    report. The codec must be reachable by the family's own
    loading code (a real package at random init, or a stand-in with upstream's signature set up by the caller).
    A random tiny LM almost never picks its stop id among thousands of speech ids, so each item speaks about
    ``max_new_tokens`` tokens."""
    import shutil

    from spade_tts.importance.layer_importance import ScoreConfig, score_layers
    from spade_tts.pruning.prune import PruneConfig, prune_checkpoint

    tmp_path = Path(tmp_path)
    manifest = audio_manifest(tmp_path / "speech", words=family == "outetts")
    model = with_identity_layer(Path(ckpt), tmp_path / "identity", family, 1, family_config)
    fam = {"family": family, "family_config": family_config or ""}
    gen = {"max_new_tokens": max_new_tokens}
    score = dict(items_per_speaker=1, batch_size=2, compare=False, overlap_asr=False, bootstrap_resamples=50, **gen)

    # 1. WLI (+ proxies) through the family's generation and codec decoder, Whisper on the audio
    scores = score_layers(ScoreConfig(model=str(model), data=str(manifest), out_dir=str(tmp_path / "score"),
                                      **score, **fam))
    depth = scores["num_layers"]
    assert scores["metrics"][0] == "wli" and scores["items"] == 2 and scores["family"] == family
    assert all(0 <= row["wli"] <= 1 and np.isfinite(row["tf_loss_rise"]) for row in scores["layers"])
    assert scores["wli_stability"]["items"] == 2
    runs = json.loads((tmp_path / "score" / "state.json").read_text())["runs"]
    full = runs["skip:"]["per_item"]
    assert runs["skip:1"]["per_item"] == full, "skipping an exact identity changed what was spoken"
    assert scores["layers"][1]["wli"] == scores["full_wer"]
    assert all(r["seconds"] > 0 for r in full), "the codec decoded no audio"

    # 2. prune by WLI
    compressed = tmp_path / "compress"
    pruned = prune_checkpoint(PruneConfig(model=str(model), scores=str(tmp_path / "score" / "scores.json"),
                                          out=str(compressed / "pruned"), ratio=0.5, **fam))
    assert len(json.loads((pruned / "spade_pruning.json").read_text())["kept"]) == depth // 2
    shutil.copytree(tmp_path / "score", compressed / "score")  # compress picks both up, as after an interruption

    # 3. the whole method in one command (the CLI, --quick's small settings on your manifest): it distills the
    #    pruned model, evaluates full / pruned / distilled side by side on the manifest's items and writes a report
    from spade_tts.cli import main

    argv = ["compress", "--model", str(model), "--data", str(manifest), "--family", family, "--quick",
            f"out_dir={compressed}", f"eval.max_new_tokens={max_new_tokens}", "eval.isolate=false", "eval.dnsmos=false",
            "eval.items_per_speaker=1",
            "distill.steps=2", "distill.save_every=2", "distill.warmup=1", "distill.batch_size=2", "distill.device=cpu"]
    if family_config:
        argv += ["--family-config", family_config]
    assert main(argv) == 0
    summary = json.loads((compressed / "summary.json").read_text())
    html = Path(summary["report"]).read_text()
    assert "distilled" in html and Path(summary["distilled"], "spade_distill.json").is_file()
    data = json.loads(Path(summary["eval"]).read_text())
    full_m, small, distilled = data["models"]
    assert {m["family"] for m in data["models"]} == {family} and small["layers"] == distilled["layers"] == depth // 2
    assert small["vs_first"]["wer"]["n"] == 2 and small["params"]["lm"] < full_m["params"]["lm"]
    for m in data["models"]:
        assert m["rtf"]["lm"] > 0 and m["rtf"]["e2e"] >= m["rtf"]["lm"] and m["peak_mem_bytes"] > 0
    return {"scores": scores, "eval": data, "summary": summary}
