"""Speculative decoding (spade_tts/families/speculative.py) on tiny random-weight models: lossless by test.

Three claims, each checked where it can fail: greedy output is plain greedy output token for token;
sampled output follows the model's own distribution (a chi-square test that a broken accept rule
fails); the KV caches after rejected drafts are rewound to exactly what plain decoding holds.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spade_tts.families.base import GenerationConfig, GenerationRequest, SpeechLayout, SpeechLM
from spade_tts.families.generate import generate

from test_family_generic import build_generic
from test_static_decoder import ARCHS, VOCAB, make_model, padded_batch


def _randomize(model, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():  # the default init is tiny: logits would be nearly uniform and every draft agree
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.3)
    return model.eval()


def tiny_llama(vocab: int, layers: int = 4, seed: int = 0):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    return _randomize(LlamaForCausalLM(cfg), seed)


class TinyTokenLM(SpeechLM):
    """A token-rule family (TokenSampler) with 6 speech tokens (ids 8..13) and a stop id (14)."""

    family = "tiny-token"

    def generation_defaults(self, **overrides) -> GenerationConfig:
        return GenerationConfig(**{"temperature": 1.0, "top_p": 0.9, **overrides})


def tiny_builtin(path: Path, num_speech: int = 6, seed: int = 0):
    """The builtin family's phone-forced rule over a random 4-layer Llama (phones 6..47, speech from 48)."""
    from spade_tts.families.builtin import BuiltinSpeechLM
    from spade_tts.reference.vocab import Vocab

    vocab = Vocab(num_speech=num_speech)
    codec = types.SimpleNamespace(config=types.SimpleNamespace(tokens_per_second=100))
    return BuiltinSpeechLM(path, tiny_llama(vocab.size, seed=seed), vocab, codec)


def phone_requests(tts, n: int, seed: int = 0, phones: int = 4):
    from spade_tts.families.builtin import PhoneRequest

    rng = np.random.default_rng(seed)
    v, out = tts.vocab, []
    for _ in range(n):
        target = [int(x) for x in rng.integers(v.phone_offset, v.speech_offset, phones)]
        prompt = v.prompt_ids([int(x) for x in rng.integers(v.phone_offset, v.speech_offset, 3)], target,
                              [int(x) for x in rng.integers(0, v.num_speech, 5)])
        out.append(PhoneRequest(prompt + [target[0]], target_phones=target))
    return out


def write_scores(folder: Path, lm, wli: list[float]) -> None:
    """A spade-scores/1 file as `spade score` writes it (only what pruning reads)."""
    from spade_tts.pruning.layers import model_fingerprint

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scores.json").write_text(json.dumps({
        "format": "spade-scores/1", "num_layers": len(wli), "model_fingerprint": model_fingerprint(lm),
        "layers": [{"layer": i, "wli": w} for i, w in enumerate(wli)]}))


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    tts = tiny_builtin(tmp_path_factory.mktemp("tiny_builtin"))
    write_scores(tts.path, tts.lm, [0.9, 0.3, 0.5, 0.8])  # skip=1 -> [1], skip=2 -> [1, 2]
    return tts


@pytest.fixture(scope="module")
def builtin_student(builtin):
    from spade_tts.pruning.layers import prune_layers

    return prune_layers(copy.deepcopy(builtin.lm), [0, 3])  # a half-depth student, as `spade prune` makes one


@pytest.fixture(scope="module")
def token_lm(tmp_path_factory):
    layout = SpeechLayout(speech_start=8, speech_end=14, stop_ids=(14,))
    return TinyTokenLM(tmp_path_factory.mktemp("tiny_token"), tiny_llama(16, seed=1), None, layout)


@pytest.fixture(scope="module")
def generic_pair(tmp_path_factory):
    """A generic-family checkpoint (4-layer Qwen2, 4,096 speech tokens) and its half-depth student on disk."""
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.pruning.layers import prune_layers

    root = tmp_path_factory.mktemp("generic_pair")
    full = load_speech_lm(build_generic(root / "built"))
    _randomize(full.lm, 2)  # so that layers matter and a draft disagrees at times
    full.save_pretrained(root / "full")
    student = load_speech_lm(root / "full")
    prune_layers(student.lm, [0, 3])
    student.save_pretrained(root / "student")
    return full, root / "student"


def _speak(speech, requests, cfg, item_ids=None):
    gens, stats = generate(speech, requests, cfg, item_ids)
    return [(g.ids, g.guard_hits, g.truncated) for g in gens], stats


# ---------------------------------------------------------------- (a) greedy: the same tokens


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_greedy_speculative_phone_forcing_is_plain_greedy_token_for_token(builtin, builtin_student, k):
    """Built-in rule (phone forcing, length guard included): skip drafts from scores.json and by index, and a
    student, all give plain greedy's tokens, guard hits and cuts, with rejected drafts along the way."""
    from spade_tts.families.speculative import generate_speculative

    # timing by the next phone alone: on random weights the 43 phone/end logits together always win
    cfg = builtin.generation_defaults(greedy=True, max_seconds=0.3, max_phone_seconds=0.05, any_move_on=False)
    requests = phone_requests(builtin, 3)
    plain, _ = _speak(builtin, requests, cfg)
    assert sum(hits for _, hits, _ in plain) > 0  # the guard is exercised
    for draft in ("skip=2", "skip-layers=1", "student"):
        if draft == "student":
            gens, stats = generate_speculative(builtin, requests, dataclasses.replace(cfg, draft_tokens=k),
                                               list(range(3)), draft_lm=builtin_student)
            got = [(g.ids, g.guard_hits, g.truncated) for g in gens]
        else:
            got, stats = _speak(builtin, requests, dataclasses.replace(cfg, draft=draft, draft_tokens=k))
        assert got == plain, (draft, k)
        x = stats.extra
        assert 0 < x["accepted"] < x["proposed"], (draft, x)  # both acceptances and rejections happened
        assert x["tokens"] == sum(len(ids) for ids, _, _ in plain)
        assert x["tokens_per_forward"] > 1.0 and x["draft_tokens"] == k


@pytest.mark.filterwarnings("ignore:.*hit a length limit")
@pytest.mark.parametrize("decoder", ["static", "hf"])
def test_greedy_speculative_token_rule_is_plain_greedy_token_for_token(generic_pair, decoder):
    """Token rule (TokenSampler, min-length stop mask), static decoder and HF forward: skip draft and a student
    loaded from its folder, k = 1..4."""
    speech, student = generic_pair
    prompts = [speech.prompt_ids("hello there", "good night", np.array([1, 2, 3])), speech.prompt_ids("thank you")]
    requests = [GenerationRequest(p) for p in prompts]
    cfg = GenerationConfig(greedy=True, max_new_tokens=20, min_new_tokens=6, decoder=decoder)
    plain, _ = _speak(speech, requests, cfg)
    for k in (1, 2, 3, 4):
        for draft in ("skip-layers=1,2", f"student={student}"):
            got, stats = _speak(speech, requests, dataclasses.replace(cfg, draft=draft, draft_tokens=k))
            assert got == plain, (decoder, draft, k)
            assert 0 < stats.extra["accepted"] < stats.extra["proposed"], (draft, stats.extra)


# ---------------------------------------------------------------- (b) sampled: the model's distribution


def exact_first_two(speech, request, cfg) -> dict[tuple, float]:
    """The rule's exact distribution of the first two generated ids (one if the first ends the item), from the
    model's own HF forward and the rule's distribution()."""
    sampler = speech.sampler([request], cfg, [0])
    rows = sampler.rows.tolist()

    def logits(ids):
        with torch.no_grad():
            return speech.lm(input_ids=torch.tensor([ids])).logits[0, -1, sampler.rows]

    out = {}
    p1 = sampler.distribution(0, logits(request.prompt))
    for x1 in torch.nonzero(p1).flatten().tolist():
        snap = sampler.snapshot(0)
        sampler.push(0, rows[x1])
        if sampler.finished(0):
            out[(rows[x1],)] = float(p1[x1])
        else:
            p2 = sampler.distribution(0, logits(request.prompt + [rows[x1]]))
            for x2 in torch.nonzero(p2).flatten().tolist():
                out[(rows[x1], rows[x2])] = float(p1[x1] * p2[x2])
        sampler.restore(0, snap)
    return out


def first_two_counts(speech, request, cfg, n: int) -> dict[tuple, int]:
    """How often each (first, second) id pair comes in ``n`` independent generations of ``request``."""
    gens, _ = generate(speech, [request] * n, cfg, list(range(n)))
    counts: dict[tuple, int] = {}
    for g in gens:
        key = tuple(g.ids[:2])
        counts[key] = counts.get(key, 0) + 1
    return counts


def chi_square_p(counts: dict[tuple, int], exact: dict[tuple, float]) -> float:
    """p-value of ``counts`` under ``exact`` (bins expected below 5 pooled); 0 if an impossible pair came."""
    from scipy.stats import chi2

    if set(counts) - set(exact):
        return 0.0
    n = sum(counts.values())
    obs, exp, small_o, small_e = [], [], 0, 0.0
    for key, p in exact.items():
        if n * p >= 5:
            obs.append(counts.get(key, 0))
            exp.append(n * p)
        else:
            small_o, small_e = small_o + counts.get(key, 0), small_e + n * p
    if small_e > 0:
        obs.append(small_o)
        exp.append(small_e)
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    return float(chi2.sf(stat, len(obs) - 1))


def total_variation(counts: dict[tuple, int], exact: dict[tuple, float]) -> float:
    n = sum(counts.values())
    keys = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in keys)


@pytest.mark.filterwarnings("ignore:.*hit a length limit")
@pytest.mark.parametrize("rule", ["phone-forced", "phone-forced-next-phone", "token"])
def test_sampled_speculative_tokens_follow_the_models_distribution_and_a_broken_accept_rule_fails(
        builtin, token_lm, rule, monkeypatch):
    """2,000 draws of the first two tokens: plain sampling and speculative sampling (k = 2, skip draft) both
    pass a chi-square test against the exact distribution; always accepting the draft does not."""
    import spade_tts.families.speculative as spec

    n = 2000
    if rule.startswith("phone-forced"):  # temperature 1, top-p 0.8; two codes at most
        speech, request = builtin, phone_requests(builtin, 1, seed=3, phones=2)[0]
        cfg = builtin.generation_defaults(max_seconds=0.02, any_move_on=rule == "phone-forced")
    else:
        speech, request = token_lm, GenerationRequest([1, 2, 3, 4, 5])
        cfg = token_lm.generation_defaults(max_new_tokens=3)  # temperature 1, top-p 0.9
    exact = exact_first_two(speech, request, cfg)
    drafted = dataclasses.replace(cfg, draft="skip-layers=1,2", draft_tokens=2)
    draft_exact = exact_first_two(_skipped(speech, [1, 2]), request, cfg)
    assert 0.5 * sum(abs(exact.get(k, 0) - draft_exact.get(k, 0)) for k in set(exact) | set(draft_exact)) > 0.15

    plain = first_two_counts(speech, request, cfg, n)
    assert chi_square_p(plain, exact) > 1e-3  # distribution() describes what the plain rule draws
    fast = first_two_counts(speech, request, drafted, n)
    assert chi_square_p(fast, exact) > 1e-3 and total_variation(fast, exact) < 0.05

    monkeypatch.setattr(spec, "accept", lambda p, q, u: True)
    broken = first_two_counts(speech, request, drafted, n)
    assert chi_square_p(broken, exact) < 1e-6 and total_variation(broken, exact) > 0.1  # the test sees a wrong rule
    print(f"{rule}: chi-square p plain {chi_square_p(plain, exact):.3g}, speculative {chi_square_p(fast, exact):.3g}, "
          f"always-accept {chi_square_p(broken, exact):.3g}; TV {total_variation(plain, exact):.3f} / "
          f"{total_variation(fast, exact):.3f} / {total_variation(broken, exact):.3f}")


def _skipped(speech, skip):
    """A copy of ``speech`` whose LM has ``skip`` pruned away (the skip draft's distribution, for reference)."""
    from spade_tts.pruning.layers import prune_layers

    depth = speech.lm.config.num_hidden_layers
    other = copy.copy(speech)
    other.lm = prune_layers(copy.deepcopy(speech.lm), [i for i in range(depth) if i not in skip])
    return other


def test_sampled_speculative_output_is_reproducible_and_batch_independent(builtin):
    cfg = builtin.generation_defaults(max_seconds=0.3, draft="skip=1", draft_tokens=3, seed=5)
    requests = phone_requests(builtin, 3, seed=7)
    a, _ = _speak(builtin, requests, cfg)
    assert a == _speak(builtin, requests, cfg)[0]
    assert [_speak(builtin, [r], cfg, [i])[0][0] for i, r in enumerate(requests)] == a
    assert _speak(builtin, requests, dataclasses.replace(cfg, seed=6))[0] != a


# ---------------------------------------------------------------- (c) extend and rewind


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("static_shapes", [False, True])
def test_extend_gives_the_logits_of_n_steps_and_rewind_restores_the_plain_kv_cache(arch, static_shapes):
    """A left-padded batch: extend(4) = 4 steps' logits; rewind(2), extend(3), rewind(1), 2 steps = plain steps,
    logits and every filled KV slot (sliding-window Mistral included)."""
    from spade_tts.decoding import StaticDecoder

    model = make_model(arch, **({"sliding_window": 4} if arch == "mistral" else {}))
    ids, mask = padded_batch([8, 3, 6])
    feed = torch.randint(1, VOCAB, (3, 7), generator=torch.Generator().manual_seed(3))
    plain = StaticDecoder(model, 3, 20, static_shapes=static_shapes)
    ref = [plain.prefill(ids, mask)] + [plain.step(feed[:, i]) for i in range(6)]
    spec = StaticDecoder(model, 3, 20, static_shapes=static_shapes)
    spec.prefill(ids, mask)
    close = dict(atol=5e-5, rtol=1e-5)
    got = spec.extend(feed[:, :4])
    for i in range(4):
        torch.testing.assert_close(got[:, i], ref[i + 1], **close)
    spec.rewind(2)  # feed[2:4] rejected
    got = spec.extend(feed[:, 2:5])
    for i in range(3):
        torch.testing.assert_close(got[:, i], ref[i + 3], **close)
    spec.rewind(1)
    torch.testing.assert_close(spec.step(feed[:, 4]), ref[5], **close)
    torch.testing.assert_close(spec.step(feed[:, 5]), ref[6], **close)
    assert spec._t == plain._t
    for (k1, v1), (k2, v2) in zip(plain._caches, spec._caches):
        torch.testing.assert_close(k2[:, :, :plain._t], k1[:, :, :plain._t], **close)
        torch.testing.assert_close(v2[:, :, :plain._t], v1[:, :, :plain._t], **close)
    with pytest.raises(ValueError, match="rewind"):
        spec.rewind(7)  # past the prompt


def test_hf_engine_extend_and_rewind_match_its_steps():
    from spade_tts.families.generate import _HFEngine

    model = make_model("qwen2")
    rows = torch.arange(40, VOCAB)
    ids, mask = padded_batch([6, 4])
    feed = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    plain = _HFEngine(model, rows)
    ref = [plain.prefill(ids, mask)] + [plain.step(feed[:, i]) for i in range(5)]
    eng = _HFEngine(model, rows)
    eng.prefill(ids, mask)
    got = eng.extend(feed[:, :4])
    eng.rewind(3)
    got2 = eng.extend(feed[:, 1:5])
    for i in range(4):
        torch.testing.assert_close(got[:, i], ref[i + 1], atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(got2[:, i], ref[i + 2], atol=5e-5, rtol=1e-5)
    for a, b in zip(plain.cache.layers, eng.cache.layers):
        torch.testing.assert_close(b.keys, a.keys, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(b.values, a.values, atol=5e-5, rtol=1e-5)


def test_after_speculative_generation_the_models_kv_cache_is_plain_decodings(builtin, monkeypatch):
    """The model's decoder after a sampled speculative item (many rejections) holds the cache a plain decoder
    fed the same tokens holds."""
    import spade_tts.families.generate as gen_mod
    from spade_tts.decoding import StaticDecoder

    engines = []
    real = gen_mod.decode_engine

    def spy(*args, **kw):
        engines.append(real(*args, **kw))
        return engines[-1]

    monkeypatch.setattr(gen_mod, "decode_engine", spy)
    request = phone_requests(builtin, 1, seed=11)[0]
    cfg = builtin.generation_defaults(max_seconds=0.3, draft="skip=2", draft_tokens=3)
    (ids, _, _), = _speak(builtin, [request], cfg)[0]
    target = engines[0]
    fed = target._t - len(request.prompt)
    assert 0 < fed <= len(ids)
    plain = StaticDecoder(builtin.lm, 1, target.max_len, head_rows=builtin.layout.head_rows())
    plain.prefill(torch.tensor([request.prompt]))
    for tok in ids[:fed]:
        plain.step(torch.tensor([tok]))
    for (k1, v1), (k2, v2) in zip(plain._caches, target._caches):
        torch.testing.assert_close(k2[:, :, :target._t], k1[:, :, :target._t], atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(v2[:, :, :target._t], v1[:, :, :target._t], atol=5e-5, rtol=1e-5)


# ---------------------------------------------------------------- errors


def test_bad_draft_specs_are_one_line_errors(builtin, generic_pair, tmp_path, monkeypatch):
    from spade_tts.families.speculative import parse_draft

    for bad in ("bogus", "skip=0", "skip=two", "skip-layers=", "skip-layers=a,b", "student=", "layers=1"):
        with pytest.raises(ValueError, match="draft=.*student=PATH, skip=N"):
            parse_draft(bad)
    assert parse_draft("skip-layers=3, 1") == ("skip-layers", [1, 3]) and parse_draft("skip=6") == ("skip", 6)
    request = phone_requests(builtin, 1)
    cfg = builtin.generation_defaults(greedy=True, max_seconds=0.05)
    for draft, err, match in (("skip=4", ValueError, "4 layers; skip 1..3"),
                              ("skip-layers=0,1,2,3", ValueError, "at least one must stay"),
                              ("skip-layers=9", ValueError, "0..3")):
        with pytest.raises(err, match=match):
            generate(builtin, request, dataclasses.replace(cfg, draft=draft))
    with pytest.raises(FileNotFoundError, match="draft_scores=PATH"):
        generate(builtin, request, dataclasses.replace(cfg, draft="skip=1", draft_scores=str(tmp_path / "none.json")))
    write_scores(tmp_path / "other", tiny_llama(builtin.vocab.size, seed=9), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="another model"):
        generate(builtin, request, dataclasses.replace(cfg, draft="skip=1",
                                                       draft_scores=str(tmp_path / "other" / "scores.json")))
    with pytest.raises(ValueError, match="static-int8"):
        generate(builtin, request, dataclasses.replace(cfg, draft="skip=1", decoder="static-int8"))
    with pytest.raises(ValueError, match="draft_tokens=0"):
        generate(builtin, request, dataclasses.replace(cfg, draft="skip=1", draft_tokens=0))

    speech, student = generic_pair  # a student whose vocabulary is not the model's
    from transformers import Qwen2ForCausalLM

    other = tmp_path / "wide"
    lm = Qwen2ForCausalLM.from_pretrained(student)
    lm.resize_token_embeddings(lm.config.vocab_size + 8)
    import shutil

    shutil.copytree(student, other)
    lm.save_pretrained(other)
    prompt = [GenerationRequest(speech.prompt_ids("hello there"))]
    gcfg = GenerationConfig(greedy=True, max_new_tokens=4)
    with pytest.raises(ValueError, match="another vocabulary"):
        generate(speech, prompt, dataclasses.replace(gcfg, draft=f"student={other}"))

    from transformers.cache_utils import Cache  # HF caches that cannot be cut back

    monkeypatch.delattr(Cache, "crop")
    with pytest.raises(ValueError, match="cannot be cut back"):
        generate(speech, prompt, dataclasses.replace(gcfg, draft="skip-layers=1", decoder="hf"))


# ---------------------------------------------------------------- the stages: spade synth and spade eval


@pytest.mark.filterwarnings("ignore:.*hit a length limit")
def test_spade_synth_draft_speaks_the_built_in_models_greedy_codes(tmp_path, capsys):
    from spade_tts.cli import main

    codes = tmp_path / "prompt.npy"
    np.save(codes, np.random.default_rng(0).integers(0, 4096, 80))
    common = ["synth", "--text", "Hello there.", "--prompt-codes", str(codes), "--prompt-text", "Good night.",
              "--temperature", "0", "max_seconds=0.6"]
    assert main([*common, "-o", str(tmp_path / "plain.npy")]) == 0
    fast = ["-o", str(tmp_path / "fast.npy"), "--draft", "skip-layers=4,5,6,7", "--draft-tokens", "3"]
    assert main([*common, *fast]) == 0
    assert np.array_equal(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "fast.npy"))
    assert "draft skip-layers=4,5,6,7:" in capsys.readouterr().out
    assert main([*common, "-o", str(tmp_path / "x.npy"), "--draft", "skip=zero"]) == 2
    assert "draft='skip=zero'" in capsys.readouterr().err


def test_spade_eval_passes_the_draft_on_keys_it_and_prints_its_acceptance(builtin):
    from spade_tts.evaluation.evaluate import EvalConfig, _cache_key, format_table, generation_config
    from spade_tts.evaluation.models import ModelSpec

    cfg = EvalConfig(draft="skip=2", draft_tokens=3)
    gen = generation_config(cfg, builtin)
    assert (gen.draft, gen.draft_tokens, gen.temperature, gen.top_p) == ("skip=2", 3, 1.0, 0.8)
    spec, items = ModelSpec("full", ""), [{"id": "a", "prompt_wav": "p.wav", "prompt_text": "x", "target_text": "y"}]
    plain_key = _cache_key(EvalConfig(), spec, items)
    assert "draft" not in plain_key[1]["settings"]  # results stored before drafts existed keep their key
    assert _cache_key(cfg, spec, items)[0] != plain_key[0]
    model = {"label": "full", "layers": 12, "params": {"lm": 1, "system": 1}, "wer": None, "wer_capped": None,
             "cer": None, "sim": None, "dnsmos": {"p808": None, "ovrl": None}, "rtf": {"lm": None, "e2e": None},
             "tokens_per_second": None, "peak_mem_bytes": 1, "peak_mem_kind": "cpu_peak_rss", "vs_first": None,
             "rtf_runs": {"e2e": [1], "items_per_run": 1},
             "speculative": {"draft": "skip=2", "draft_tokens": 3, "acceptance_rate": 0.5, "tokens_per_forward": 1.8}}
    table = format_table({"models": [model], "items": {"count": 1}, "machine": {"device": "cpu"}})
    assert "full: draft skip=2 (k=3), 50.0 % of drafted tokens accepted, 1.80 tokens per full-model forward" in table


def test_spade_eval_with_a_draft_reports_acceptance_per_item_and_per_model(tiny_corpus, tiny_reference, tmp_path):
    from spade_tts.evaluation.evaluate import EvalConfig, evaluate_models

    corpus, _, _ = tiny_corpus
    cfg = EvalConfig(models=[f"full={tiny_reference}"], corpus_dir=str(corpus), items_per_speaker=1,
                     max_prompt_seconds=30.0, max_seconds=1.0, warmup=0, rtf_runs=1, rtf_items=1, dnsmos=False,
                     isolate=False, bootstrap_resamples=50, out_dir=str(tmp_path / "eval"),
                     json=str(tmp_path / "e.json"), draft="skip-layers=1,2", draft_tokens=2)
    (m,) = evaluate_models(cfg)["models"]
    spec = m["speculative"]
    assert spec["draft"] == "skip-layers=1,2" and spec["draft_tokens"] == 2
    assert 0 <= spec["acceptance_rate"] <= 1 and spec["tokens_per_forward"] >= 1
    assert sum(r["draft"]["tokens"] for r in m["per_item"]) == spec["tokens"] > 0


# ---------------------------------------------------------------- (d) group-level acceptance (not lossless)


def test_speech_token_groups_put_tokens_with_alike_embeddings_together(tmp_path):
    """k-means over the model's own speech-token embeddings: three planted pairs come out as three groups; every
    other column (the stop id) is a group of its own; the same groups on every call."""
    from spade_tts.families.speculative import column_groups, speech_token_groups

    layout = SpeechLayout(speech_start=8, speech_end=14, stop_ids=(14,))
    speech = TinyTokenLM(tmp_path, tiny_llama(16, seed=4), None, layout)
    torch.manual_seed(0)
    centres = torch.randn(3, 32)
    with torch.no_grad():
        emb = speech.lm.get_input_embeddings().weight
        for i, c in enumerate([0, 1, 2, 0, 1, 2]):  # tokens 8 & 11, 9 & 12, 10 & 13 alike
            emb[8 + i] = centres[c] + 0.05 * torch.randn(32)
    groups = speech_token_groups(speech, 3).tolist()
    assert groups[0] == groups[3] and groups[1] == groups[4] and groups[2] == groups[5]
    assert len(set(groups)) == 3
    cols = column_groups(speech, layout.head_rows(), 3).tolist()  # columns: ids 8..14
    assert cols[:6] == groups and cols[6] not in groups
    assert column_groups(speech, layout.head_rows(), 0) is None  # exact: every token its own group
    with pytest.raises(ValueError, match="6 speech tokens; use 2..6 groups"):
        speech_token_groups(speech, 7)


def _first_groups(speech, request, cfg, n, groups):
    """How often the first generated id falls in each group, over ``n`` independent generations; and the stats."""
    rows = speech.sampler([request], cfg, [0]).rows.tolist()
    gens, stats = generate(speech, [request] * n, cfg, list(range(n)))
    counts: dict[tuple, int] = {}
    for g in gens:
        key = (int(groups[rows.index(g.ids[0])]),)
        counts[key] = counts.get(key, 0) + 1
    return counts, stats


@pytest.mark.filterwarnings("ignore:.*hit a length limit")
@pytest.mark.parametrize("rule", ["phone-forced", "token"])
def test_group_acceptance_keeps_the_models_group_distribution_and_accepts_more_than_exact(
        builtin, token_lm, rule, monkeypatch):
    """2,000 draws: with draft_accept=groups=3 the first token's group follows the model's group masses (chi-square)
    while more drafts are accepted than with exact acceptance; accepting every draft fails the same test."""
    import spade_tts.families.speculative as spec

    n = 2000
    if rule == "phone-forced":  # the whole distribution, so that the codes within a group share the mass
        speech, request = builtin, phone_requests(builtin, 1, seed=3, phones=2)[0]
        cfg = builtin.generation_defaults(max_seconds=0.02, any_move_on=False, top_p=1.0)
    else:
        speech, request = token_lm, GenerationRequest([1, 2, 3, 4, 5])
        cfg = token_lm.generation_defaults(max_new_tokens=3)
    exact_cfg = dataclasses.replace(cfg, draft="skip-layers=1,2", draft_tokens=2)
    group_cfg = dataclasses.replace(exact_cfg, draft_accept="groups=3")
    sampler = speech.sampler([request], cfg, [0])
    groups = spec.column_groups(speech, sampler.rows, 3)

    def first_tokens(model):
        with torch.no_grad():
            logits = model.lm(input_ids=torch.tensor([request.prompt])).logits[0, -1, sampler.rows]
        return sampler.distribution(0, logits)

    def masses(probs):
        return {(g,): float(m) for g, m in enumerate(spec._masses(probs, groups).tolist()) if m > 0}

    p, q = first_tokens(speech), first_tokens(_skipped(speech, [1, 2]))
    exact, drafted = masses(p), masses(q)
    assert 0.5 * sum(abs(exact.get(k, 0) - drafted.get(k, 0)) for k in set(exact) | set(drafted)) > 0.1
    overlap = float(torch.minimum(p, q).sum())  # the chance a first draft is accepted, exact and by group
    group_overlap = sum(min(m, drafted.get(k, 0.0)) for k, m in exact.items())
    assert group_overlap > overlap + 0.01

    counts, stats = _first_groups(speech, request, group_cfg, n, groups)
    assert chi_square_p(counts, exact) > 1e-3 and total_variation(counts, exact) < 0.05
    assert stats.extra["draft_accept"] == "groups=3"
    _, exact_stats = _first_groups(speech, request, exact_cfg, n, groups)
    assert stats.extra["acceptance_rate"] > exact_stats.extra["acceptance_rate"]

    monkeypatch.setattr(spec, "accept", lambda p, q, u: True)
    broken, _ = _first_groups(speech, request, group_cfg, n, groups)
    assert chi_square_p(broken, exact) < 1e-6
    print(f"{rule}: first-draft acceptance {overlap:.3f} exact, {group_overlap:.3f} by group; chi-square p {chi_square_p(counts, exact):.3g} "
          f"(always-accept {chi_square_p(broken, exact):.3g}); acceptance {stats.extra['acceptance_rate']:.3f} "
          f"vs exact {exact_stats.extra['acceptance_rate']:.3f}")


def test_bad_draft_accept_is_a_one_line_error(builtin):
    from spade_tts.families.speculative import parse_accept

    assert parse_accept("exact") == 0 and parse_accept("groups=64") == 64 and parse_accept(" Groups=2 ") == 2
    for bad in ("groups=1", "groups=", "groups=x", "group=4", "exact=1", ""):
        with pytest.raises(ValueError, match="draft_accept=.*exact .*groups=N"):
            parse_accept(bad)
    request = phone_requests(builtin, 1)
    cfg = builtin.generation_defaults(greedy=True, max_seconds=0.05, draft="skip-layers=1")
    with pytest.raises(ValueError, match="draft_accept="):
        generate(builtin, request, dataclasses.replace(cfg, draft_accept="groups"))
    with pytest.raises(ValueError, match="6 speech tokens"):
        generate(builtin, request, dataclasses.replace(cfg, draft_accept="groups=99"))
