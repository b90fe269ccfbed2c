"""The family framework: registry and detection, generation engines, the data hook, the CLI commands."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_family_generic import CODES, S0, SPEECH_END, YAML, build_generic


@pytest.fixture(scope="module")
def generic_dir(tmp_path_factory):
    return build_generic(tmp_path_factory.mktemp("core") / "generic")


@pytest.fixture(scope="module")
def generic(generic_dir):
    from spade_tts.families.registry import load_speech_lm

    return load_speech_lm(generic_dir)


def test_registry_names_and_errors(tmp_path, generic_dir):
    from spade_tts.families.registry import detect_family, family_class, load_speech_lm

    assert family_class("llasa").family == "llasa" and family_class("Orpheus").family == "orpheus"
    with pytest.raises(ValueError, match="unknown family 'nope'.*llasa"):
        family_class("nope")
    with pytest.raises(FileNotFoundError, match="not found"):
        detect_family(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 100}))
    with pytest.raises(ValueError, match="matches no known LLM-TTS family.*--family"):
        detect_family(tmp_path / "plain")
    with pytest.raises(ValueError, match="--family-config is for --family generic"):
        load_speech_lm(generic_dir, "llasa", family_config=generic_dir / "spade_family.yaml")
    with pytest.raises(ValueError, match="not a LLaSA tokenizer"):  # wrong --family: a clear line, not a traceback
        load_speech_lm(generic_dir, "llasa")


def test_ambiguous_folder_asks_for_family(tmp_path):
    """A LLaSA-looking tokenizer plus a spade_family.yaml matches two families: the error says --family."""
    from spade_tts.families.registry import detect_family

    d = tmp_path / "both"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 193800}))
    (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"<|s_0|>": 128264}}, "added_tokens": [
        {"id": 128260, "content": "<|SPEECH_GENERATION_START|>"}, {"id": 128261, "content": "<|SPEECH_GENERATION_END|>"}]}))
    assert detect_family(d) == "llasa"
    (d / "spade_family.yaml").write_text(YAML)
    with pytest.raises(ValueError, match="several families.*generic.*--family|several families.*--family"):
        detect_family(d)


def test_static_and_hf_engines_give_identical_greedy_tokens(generic):
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids, static_supported

    assert static_supported(generic.lm)
    prompts = [generic.prompt_ids("hello there", "good night", np.array([1, 2, 3])), generic.prompt_ids("thank you")]
    cfg = GenerationConfig(greedy=True, max_new_tokens=12, min_new_tokens=4)
    import dataclasses

    a = generate_ids(generic, prompts, cfg)
    b = generate_ids(generic, prompts, dataclasses.replace(cfg, decoder="hf"))
    assert a == b and all(len(x) >= 4 for x in a)
    # a batch row equals the same prompt alone (left padding changes nothing)
    assert generate_ids(generic, prompts[1:], cfg)[0] == a[1]
    # int8 weights (CPU, lossy): still only speech/stop ids, at least min_new_tokens; a bad decoder name is refused
    q = generate_ids(generic, prompts, dataclasses.replace(cfg, decoder="static-int8"))
    allowed = set(generic.layout.head_rows().tolist())
    assert all(len(x) >= 4 and set(x) <= allowed for x in q)
    with pytest.raises(ValueError, match="decoder="):
        generate_ids(generic, prompts, dataclasses.replace(cfg, decoder="bogus"))


def test_sampling_never_emits_text_and_is_seeded(generic):
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids

    prompt = [generic.prompt_ids("hello there")]
    cfg = GenerationConfig(temperature=1.5, top_p=1.0, seed=7, max_new_tokens=40)
    with pytest.warns(UserWarning, match="max_new_tokens"):
        new = generate_ids(generic, prompt, GenerationConfig(temperature=1.5, top_p=1.0, seed=7, max_new_tokens=40,
                                                             min_new_tokens=40))[0]
    assert all(S0 <= i < S0 + CODES for i in new)
    a = generate_ids(generic, prompt, cfg)[0]
    assert a == generate_ids(generic, prompt, cfg)[0]
    assert all(S0 <= i < S0 + CODES or i == SPEECH_END for i in a) and SPEECH_END not in a[:-1]


def test_data_hook_sequences_and_dataset(tmp_path, generic):
    from spade_tts.distill.data import TokenDataset
    from spade_tts.families.data import FamilyDataConfig, build_family_dataset, family_sequences, load_utterances

    np.save(tmp_path / "a.npy", np.array([5, 6, 7]))
    rows = [{"codes": "a.npy", "text": "hello there", "speaker": "x"},
            {"codes": [1, 2], "text": "good night", "speaker": "x"},
            {"codes": [9], "text": "thank you", "speaker": "y"}]
    man = tmp_path / "m.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    utts = load_utterances(generic, man)
    seqs, origin = family_sequences(generic, utts, seed=0)
    assert [o["prompt"] for o in origin] == [1, 0, None]  # same speaker; a lone speaker gets no prompt
    ids, lf = seqs[0]
    assert ids == generic.prompt_ids("hello there", "good night", np.array([1, 2])) + [S0 + 5, S0 + 6, S0 + 7,
                                                                                       SPEECH_END]
    assert ids[lf] == S0 + 2
    out = build_family_dataset(generic, FamilyDataConfig(manifest=str(man), out=str(tmp_path / "ds")))
    ds = TokenDataset(out)
    assert len(ds) == 3 and ds.meta["family"] == "generic" and ds.meta["with_prompt"] == 2
    batch = ds.micro_batch(0, 0, 0, 1, 1, 3)
    assert (batch["labels"] != -100).sum() == 4 + 3 + 2  # target speech + stop of every row

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"codes": [CODES], "text": "hi", "speaker": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: codes must be in"):
        load_utterances(generic, bad)
    bad.write_text(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(ValueError, match="needs \"audio\""):
        load_utterances(generic, bad)


def test_cli_data_score_prune(tmp_path, generic_dir, capsys):
    from spade_tts.cli import main

    man = tmp_path / "m.jsonl"
    man.write_text("\n".join(json.dumps({"codes": [k, k + 1, k + 2], "text": "hello there", "speaker": f"s{k % 2}"})
                             for k in range(4)) + "\n")
    assert main(["data", "family", "--model", str(generic_dir), "--manifest", str(man), "-o", str(tmp_path / "ds")]) == 0
    assert (tmp_path / "ds" / "spade_data.json").is_file()
    # codes-only rows: no audio to prompt a voice with, so WLI is refused with a hint, and wli=false ranks by proxies
    assert main(["score", "--model", str(generic_dir), "--data", str(man), "out_dir=" + str(tmp_path / "sc")]) == 2
    assert "wli=false" in capsys.readouterr().err
    assert main(["score", "--model", str(generic_dir), "--data", str(man), "out_dir=" + str(tmp_path / "sc"),
                 "wli=false"]) == 0
    scores = json.loads((tmp_path / "sc" / "scores.json").read_text())
    assert scores["family"] == "generic" and scores["num_layers"] == 4
    assert main(["prune", "--model", str(generic_dir), "--scores", str(tmp_path / "sc" / "scores.json"),
                 "--metric", "block_influence", "--keep", "2", "-o", str(tmp_path / "pr")]) == 0
    assert (tmp_path / "pr" / "spade_family.yaml").is_file()  # the family config travels with the pruned model
    assert main(["synth", "--model", str(tmp_path / "pr"), "--text", "hello", "--temperature", "0",
                 "--max-new-tokens", "5", "-o", str(tmp_path / "codes.npy")]) == 0
    assert np.load(tmp_path / "codes.npy").ndim == 1
    # user errors: one line, exit 2
    assert main(["score", "--model", str(generic_dir), "--family", "orpheus", "--data", str(man)]) == 2
    assert main(["data", "family", "--model", str(tmp_path / "nope"), "--manifest", str(man), "-o", "x"]) == 2
    err = capsys.readouterr().err
    assert "model folder" in err and "not found" in err


def test_prune_rejects_scores_of_another_family_model(tmp_path, generic_dir):
    from spade_tts.pruning.prune import PruneConfig, prune_checkpoint

    other = tmp_path / "other"
    shutil.copytree(generic_dir, other)
    (tmp_path / "s.json").write_text(json.dumps({"format": "spade-scores/1", "num_layers": 4, "model_fingerprint": "0" * 16,
                                                 "layers": [{"layer": i, "tf_loss_rise": float(i)} for i in range(4)]}))
    with pytest.raises(ValueError, match="another model"):
        prune_checkpoint(PruneConfig(model=str(other), scores=str(tmp_path / "s.json"), metric="tf_loss_rise",
                                     keep=2, out=str(tmp_path / "p")))


def test_repetition_aware_sampling_redraws_only_repeats():
    """CosyVoice 2's rule: a nucleus draw that repeats a recent token is redrawn from the whole distribution."""
    import torch

    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import repetition_aware

    rows = torch.tensor([100, 101, 102, 103])
    logits = torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2]])).repeat(60, 1)
    cols = torch.zeros(60, dtype=torch.long)  # the nucleus picked token 100 in every row
    cfg = GenerationConfig(temperature=1.0, ras_window=10, ras_tau=0.1)
    gen = torch.Generator().manual_seed(0)
    fresh = repetition_aware(cols, logits, rows, [[101, 102]] * 60, cfg, gen)
    assert torch.equal(fresh, cols)  # 100 is not among the recent tokens: kept
    redrawn = repetition_aware(cols, logits, rows, [[100] + [101] * 10] * 30 + [[100, 101]] * 30, cfg, gen)
    assert torch.equal(redrawn[:30], cols[:30])  # 100 lies 11 tokens back, outside the window of 10
    assert (redrawn[30:] != 0).sum() >= 10  # redrawn from 0.4/0.2/0.2/0.2: most leave token 100
    off = GenerationConfig(temperature=1.0)
    assert torch.equal(repetition_aware(cols, logits, rows, [[100]] * 60, off, gen), cols)


def test_cosyvoice2_defaults_are_upstreams_sampling():
    from spade_tts.families.cosyvoice2 import CosyVoice2SpeechLM

    cfg = CosyVoice2SpeechLM.generation_defaults(object.__new__(CosyVoice2SpeechLM), seed=3)
    assert (cfg.top_p, cfg.top_k, cfg.ras_window, cfg.ras_tau, cfg.temperature, cfg.seed) == (0.8, 25, 10, 0.1, 1.0, 3)


def test_nucleus_from_a_partial_sort_is_the_full_sorts():
    """Rows whose top NUCLEUS_PREFIX columns hold the top-p mass take the partial sort, flat rows the full one;
    either way the distribution drawn from is the one a full sort gives, with top-p and min-p alike."""
    import torch

    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import NUCLEUS_PREFIX, pick_distribution, sorted_for_nucleus

    def full_sort(logits, cfg):
        probs = torch.softmax(logits.double() / cfg.temperature, -1)
        p, order = probs.sort(-1, descending=True)
        keep = ((p.cumsum(-1) - p) < cfg.top_p) & (p >= cfg.min_p * p[:, :1])
        out = torch.zeros_like(probs).scatter_(-1, order, p * keep)
        return out / out.sum(-1, keepdim=True)

    gen = torch.Generator().manual_seed(0)
    peaked = torch.randn(6, 15360, generator=gen) * 6  # a few hundred columns hold the mass
    flat = torch.randn(2, 15360, generator=gen) * 0.1  # the nucleus spans thousands of columns
    for logits in (peaked, flat, torch.cat([peaked, flat])):
        for cfg in (GenerationConfig(temperature=1.0, top_p=0.8), GenerationConfig(temperature=0.7, top_p=0.95, min_p=0.01)):
            got = pick_distribution(logits, cfg)
            assert torch.allclose(got, full_sort(logits, cfg), atol=1e-6)
    top, cols = sorted_for_nucleus(torch.softmax(peaked, -1), 0.8)
    assert top.shape[-1] == NUCLEUS_PREFIX and bool((top[:, :-1] >= top[:, 1:]).all())
    assert sorted_for_nucleus(torch.softmax(flat, -1), 0.8)[0].shape[-1] == 15360
