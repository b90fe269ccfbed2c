"""Layer skipping and pruning on tiny random-weight models built from the real HF config classes.

The ground truth for "layer i skipped" is independent of the code under test: forward hooks
that make the skipped layers return their input, on the untouched model, without a KV cache.
Skipping (a view) and pruning (saved, then reloaded in a fresh Python process) must both
reproduce it, and cached generation must agree with uncached full forwards.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from spade_tts.cli import main
from spade_tts.pruning import (PruneConfig, choose_kept_layers, decoder_layers, find_decoder, model_fingerprint,
                               n_keep_from, prune_checkpoint, prune_layers, residual_stream, skip_layers)

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100, initializer_range=0.2, max_position_embeddings=64, eos_token_id=None, pad_token_id=0)
# Sliding windows shorter than the prompt, with mixed full/sliding layers, so that a wrong
# layer_types / max_window_layers after removal changes the output.
ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(use_sliding_window=True, sliding_window=4, max_window_layers=2)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=8, use_sliding_window=True, sliding_window=4,
                                                   max_window_layers=1)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(sliding_window=4)),
}
SKIP = {"llama": {1, 2}, "qwen2": {1}, "qwen3": {0, 2}, "mistral": {0}}
NEW_TOKENS = 12
PROMPT = torch.tensor([[5, 17, 42, 8, 99, 3, 61, 27, 70, 11]])


def tiny(arch: str, seed: int = 0):
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    return model_cls(config_cls(**TINY, **extra)).eval()


@torch.no_grad()
def hooked_logits(model, skip, ids=PROMPT):
    """Ground truth: skipped layers return their input; no cache, no change to the model."""
    def identity(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden

    handles = [layer.register_forward_hook(identity, with_kwargs=True)
               for i, layer in enumerate(decoder_layers(model)) if i in skip]
    try:
        return model(ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def greedy_uncached(model, ids=PROMPT, n=NEW_TOKENS):
    for _ in range(n):
        nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[0, PROMPT.shape[1]:].tolist()


@torch.no_grad()
def greedy_cached(model, ids=PROMPT, n=NEW_TOKENS):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


RELOAD = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    prompt = torch.tensor(json.loads(sys.argv[1]))
    result = {}
    for arch, folder in json.loads(sys.argv[2]).items():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(prompt, use_cache=False).logits
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=%d,
                                 do_sample=False)
        c = model.config
        result[arch] = {"tokens": out[0, prompt.shape[1]:].tolist(), "logits": logits.tolist(),
                        "num_hidden_layers": c.num_hidden_layers, "layers": len(model.model.layers),
                        "layer_types": getattr(c, "layer_types", None),
                        "max_window_layers": getattr(c, "max_window_layers", None),
                        "layer_idx": [layer.self_attn.layer_idx for layer in model.model.layers]}
    print(json.dumps(result))
""" % NEW_TOKENS)


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """Per arch: the skip view of the teacher, and its pruned checkpoint as reloaded by a fresh process."""
    root = tmp_path_factory.mktemp("pruned")
    views, folders = {}, {}
    for arch in ARCHS:
        teacher = tiny(arch)
        skip = SKIP[arch]
        keep = [i for i in range(4) if i not in skip]
        with skip_layers(teacher, skip):
            with torch.no_grad():
                view_logits = teacher(PROMPT, use_cache=False).logits
            view_tokens = greedy_cached(teacher)
        views[arch] = {"logits": view_logits, "tokens": view_tokens, "truth": hooked_logits(teacher, skip),
                       "full": hooked_logits(teacher, set()), "keep": keep,
                       "layer_types": getattr(teacher.config, "layer_types", None)}
        student = prune_layers(copy.deepcopy(teacher), keep)
        student.save_pretrained(root / arch)
        folders[arch] = str(root / arch)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(PROMPT.tolist()), json.dumps(folders)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    return views, fresh


@pytest.mark.parametrize("arch", list(ARCHS))
def test_skip_view_equals_pruned_checkpoint_in_fresh_process(arch, reloaded):
    views, fresh = reloaded
    view, got = views[arch], fresh[arch]
    keep = view["keep"]
    # skipping matters for these weights, so agreement below is not trivial
    assert (view["full"] - view["truth"]).abs().max() > 0.1
    torch.testing.assert_close(view["logits"], view["truth"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(got["logits"]), view["truth"], atol=1e-4, rtol=0)
    assert got["tokens"] == view["tokens"]
    assert got["num_hidden_layers"] == got["layers"] == len(keep)
    assert got["layer_idx"] == list(range(len(keep)))
    if view["layer_types"] is not None:
        assert got["layer_types"] == [view["layer_types"][i] for i in keep]
    if arch == "qwen2":  # teacher [full, full, slide, slide], layer 1 removed
        assert got["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
        assert got["max_window_layers"] == 1


@pytest.mark.parametrize("arch", list(ARCHS))
def test_cached_generation_equals_uncached_forward(arch):
    model = tiny(arch)
    skip = {0} | SKIP[arch]
    with skip_layers(model, skip):
        view = greedy_cached(model)
        assert view == greedy_uncached(model)
    pruned = prune_layers(model, [i for i in range(4) if i not in skip])
    assert greedy_cached(pruned) == greedy_uncached(pruned) == view


def test_static_cache_generation_across_skip_and_restore():
    """transformers 4.x keeps a static cache on the model between generate calls; it must not leak across depths."""
    model = tiny("llama")

    def static():
        out = model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=6, do_sample=False,
                             cache_implementation="static")
        return out[0, PROMPT.shape[1]:].tolist()

    with skip_layers(model, {0, 1}):  # a 2-layer cache first, then the full depth must not reuse it
        assert static() == greedy_uncached(model, n=6)
    full = static()
    assert full == greedy_uncached(model, n=6)
    with skip_layers(model, {3}):
        assert static() == greedy_uncached(model, n=6)
    assert static() == full


def _state(model):
    layers = decoder_layers(model)
    return {"layers": layers, "idx": [layer.self_attn.layer_idx for layer in layers],
            "config": model.config.to_dict(), "logits": hooked_logits(model, set())}


def test_skip_layers_restores_the_model_exactly_also_after_an_error():
    model = tiny("qwen2")
    before = _state(model)
    with skip_layers(model, {0, 3}):
        assert model.config.num_hidden_layers == 2 and len(decoder_layers(model)) == 2
        assert model.config.layer_types == ["full_attention", "sliding_attention"]
        assert model.config.max_window_layers == 1
        assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == [0, 1]
    with pytest.raises(RuntimeError, match="boom"):
        with skip_layers(model, [1, 2]):
            raise RuntimeError("boom")
    after = _state(model)
    assert after["layers"] is before["layers"]
    assert after["idx"] == before["idx"] == [0, 1, 2, 3]
    assert after["config"] == before["config"]
    assert torch.equal(after["logits"], before["logits"])


@pytest.mark.parametrize("skip,message", [({4}, "out of range"), ({-1}, "out of range"),
                                          ({0, 1, 2, 3}, "no layer would be left")])
def test_skip_layers_rejects_bad_indices(skip, message):
    model = tiny("llama")
    with pytest.raises(ValueError, match=message):
        with skip_layers(model, skip):
            pass
    assert model.config.num_hidden_layers == 4 and len(decoder_layers(model)) == 4


def test_prune_layers_rejects_bad_indices():
    with pytest.raises(ValueError, match="out of range; the model has layers 0..3"):
        prune_layers(tiny("llama"), [0, 4])
    with pytest.raises(ValueError, match="keep at least one"):
        prune_layers(tiny("llama"), [])


class CosyVoiceLike(nn.Module):
    """Shaped like CosyVoice 2's Qwen2LM: own speech embedding and head, Qwen2ForCausalLM at llm.model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.speech_embedding = nn.Embedding(50, 32)
        self.llm = nn.Module()
        self.llm.model = Qwen2ForCausalLM(Qwen2Config(**TINY))
        self.llm_decoder = nn.Linear(32, 50)
        # a shorter attention stack elsewhere (like a text encoder) must not be mistaken for the LM
        self.encoder = nn.ModuleList([copy.deepcopy(self.llm.model.model.layers[0]) for _ in range(2)])

    def forward(self, speech_ids):
        h = self.llm.model.model(inputs_embeds=self.speech_embedding(speech_ids), use_cache=False).last_hidden_state
        return self.llm_decoder(h)


def test_wrapped_lm_is_found_and_skipped():
    wrapper = CosyVoiceLike().eval()
    stack = find_decoder(wrapper)
    assert stack.path == "llm.model.model.layers"
    assert stack.layers is wrapper.llm.model.model.layers
    assert stack.config is wrapper.llm.model.config
    ids = torch.tensor([[3, 9, 27, 4, 44, 12]])
    with torch.no_grad():
        full = wrapper(ids)
        with skip_layers(wrapper, {0, 2}):
            assert wrapper.llm.model.config.num_hidden_layers == 2
            skipped = wrapper(ids)
            lm = wrapper.llm.model
            assert greedy_cached(lm) == greedy_uncached(lm)
    hooks = [wrapper.llm.model.model.layers[i].register_forward_hook(lambda m, a, k, o: a[0] if a else k[
        "hidden_states"], with_kwargs=True) for i in (0, 2)]
    with torch.no_grad():
        truth = wrapper(ids)
    for h in hooks:
        h.remove()
    assert (full - truth).abs().max() > 0.1
    torch.testing.assert_close(skipped, truth, atol=1e-5, rtol=0)
    assert wrapper.llm.model.config.num_hidden_layers == 4


def test_no_decoder_stack_is_a_clear_error():
    with pytest.raises(ValueError, match="no decoder layers found in Sequential"):
        decoder_layers(nn.Sequential(nn.Linear(2, 2)))


def test_fingerprint_identifies_weights_not_dtype():
    a, b = tiny("llama"), tiny("llama")
    assert model_fingerprint(a) == model_fingerprint(b)
    assert len(model_fingerprint(a)) == 16
    assert model_fingerprint(copy.deepcopy(a).to(torch.bfloat16)) == model_fingerprint(a)
    assert model_fingerprint(tiny("llama", seed=1)) != model_fingerprint(a)
    with torch.no_grad():
        b.model.layers[2].mlp.up_proj.weight.mul_(1.5)
    assert model_fingerprint(b) != model_fingerprint(a)
    assert model_fingerprint(prune_layers(copy.deepcopy(a), [0, 1, 3])) != model_fingerprint(a)


def test_residual_stream_is_before_the_final_norm():
    model = tiny("llama")
    stream = residual_stream(model, input_ids=PROMPT)
    with torch.no_grad():
        hf = model(PROMPT, output_hidden_states=True).hidden_states
    assert len(stream) == len(hf) == 5
    for mine, theirs in zip(stream[:-1], hf[:-1]):
        torch.testing.assert_close(mine, theirs)
    # HF's last entry is the final norm's output, not the last layer's
    assert (stream[-1] - hf[-1]).abs().max() > 0.1
    with torch.no_grad():
        torch.testing.assert_close(model.model.norm(stream[-1]), hf[-1])


# --- choosing layers -------------------------------------------------------------------------

def scores_for(values: dict[str, list[float]], fingerprint: str = "0" * 16, **extra) -> dict:
    n = len(next(iter(values.values())))
    return {"format": "spade-scores/1", "model": "built-in", "model_fingerprint": fingerprint, "num_layers": n,
            "full_wer": 0.5, "metrics": list(values),
            "layers": [{"layer": i, **{k: v[i] for k, v in values.items()}} for i in range(n)], **extra}


def test_choose_kept_layers_ranks_by_metric_with_ties_to_lower_index():
    s = scores_for({"wli": [0.9, 0.2, 0.5, 0.2, 0.7, 0.1], "angular": [0.0, 0.6, 0.5, 0.4, 0.3, 0.2]})
    assert choose_kept_layers(s, 3) == [0, 2, 4]
    assert choose_kept_layers(s, 4) == [0, 1, 2, 4]  # 1 and 3 tie at 0.2: the lower index wins
    assert choose_kept_layers(s, 3, metric="angular") == [1, 2, 3]
    assert choose_kept_layers(s, 3, metric="angular", keep_first=True, keep_last=True) == [0, 1, 5]
    assert choose_kept_layers(s, 2, keep_last=True) == [0, 5]
    assert choose_kept_layers({"num_layers": 6}, 3, metric="first") == [0, 1, 2]
    assert choose_kept_layers({"num_layers": 6}, 3, metric="first", keep_last=True) == [0, 1, 5]


def test_choose_kept_layers_iterative():
    s = scores_for({"wli": [1, 1, 1, 1, 1, 1]}, iterative={"removed_order": [3, 5, 1], "kept": [0, 2, 4]})
    assert choose_kept_layers(s, 3, metric="iterative") == [0, 2, 4]
    assert choose_kept_layers(s, 5, metric="iterative") == [0, 1, 2, 4, 5]
    with pytest.raises(ValueError, match="cover keeping 3, 4, 5, 6 layers, not 2"):
        choose_kept_layers(s, 2, metric="iterative")
    with pytest.raises(ValueError, match="does not contain layer 5"):
        choose_kept_layers(s, 4, metric="iterative", keep_last=True)
    with pytest.raises(ValueError, match="needs an 'iterative' section"):
        choose_kept_layers(scores_for({"wli": [1, 2]}), 1, metric="iterative")


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_keep=0), r"keep must be in \[1, 4\]"),
    (dict(n_keep=5), r"cannot keep 5 layers of 4"),
    (dict(n_keep=2, metric="wer"), "available: angular, wli, first"),
    (dict(n_keep=1, keep_first=True, keep_last=True), "force 2 layers but only 1"),
])
def test_choose_kept_layers_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_kept_layers(scores_for({"wli": [1, 2, 3, 4], "angular": [1, 2, 3, 4]}), **kwargs)


def test_malformed_scores_are_rejected():
    with pytest.raises(ValueError, match="not a spade-scores/1 file"):
        choose_kept_layers({"format": "other", "num_layers": 2, "layers": []}, 1)
    bad = scores_for({"wli": [1, 2, 3]})
    bad["layers"].pop(1)
    with pytest.raises(ValueError, match="one entry per layer 0..2"):
        choose_kept_layers(bad, 1)


def test_n_keep_from():
    assert n_keep_from(12, ratio=0.5) == 6
    assert n_keep_from(24, ratio=0.5) == 12
    assert n_keep_from(16, ratio=0.25) == 12
    assert n_keep_from(12, keep=12) == 12
    assert n_keep_from(12, keep=3, ratio=0.0) == 3  # 0 means "not given", as in PruneConfig
    for kwargs, message in [(dict(ratio=1.0), r"must be in \(0, 1\)"), (dict(ratio=-0.5), r"must be in \(0, 1\)"),
                            (dict(ratio=0.01), "removes 0"), (dict(keep=13), r"not a layer count in \[1, 12\]"),
                            (dict(keep=-1), "not a layer count"), (dict(), "say how many layers"),
                            (dict(keep=6, ratio=0.5), "not both")]:
        with pytest.raises(ValueError, match=message):
            n_keep_from(12, **kwargs)


# --- checkpoints and the CLI ----------------------------------------------------------------

# side files of a plain HF folder (the built-in model's own side files would make it a builtin-family checkpoint)
SIDE_FILES = {"tokenizer.json": "{\"tok\": 1}", "vocab.json": "{\"v\": 2}", "preprocessor_config.json": "{\"c\": 3}",
              "codec.safetensors": "not really weights", "README.md": "hello"}


@pytest.fixture
def source(tmp_path):
    """A saved tiny float16 Llama with side files, and a matching scores file."""
    model = tiny("llama").to(torch.float16)
    folder = tmp_path / "teacher"
    model.save_pretrained(folder, max_shard_size="20KB")  # sharded, like the built-in model
    for name, text in SIDE_FILES.items():
        (folder / name).write_text(text)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    scores = scores_for({"wli": [0.9, 0.1, 0.3, 0.8], "angular": [0.1, 0.9, 0.8, 0.2]},
                        fingerprint=model_fingerprint(loaded))
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores))
    return folder, path, loaded


def test_prune_checkpoint_writes_a_drop_in_model(source, tmp_path):
    folder, scores, teacher = source
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    out = prune_checkpoint(PruneConfig(model=str(folder), scores=str(scores), out=str(tmp_path / "student"),
                                       ratio=0.5))
    for name, text in SIDE_FILES.items():
        assert (out / name).read_text() == text
    assert not (out / "model.safetensors.index.json").exists() or \
        set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values()) == \
        {p.name for p in out.glob("model*.safetensors")}
    info = json.loads((out / "spade_pruning.json").read_text())
    assert info["kept"] == [0, 3] and info["removed"] == [1, 2]
    assert info["teacher_layers"] == 4 and info["student_layers"] == 2 and info["metric"] == "wli"
    assert info["source_fingerprint"] == model_fingerprint(teacher)
    assert [e["wli"] for e in info["scores"]] == [0.9, 0.1, 0.3, 0.8]
    student = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert student.config.num_hidden_layers == 2 and student.dtype == torch.float16
    assert info["fingerprint"] == model_fingerprint(student)
    for s, t in enumerate(info["kept"]):
        assert torch.equal(student.model.layers[s].mlp.down_proj.weight, teacher.model.layers[t].mlp.down_proj.weight)
    # rerunning replaces the earlier result
    prune_checkpoint(PruneConfig(model=str(folder), scores=str(scores), out=str(out), keep=3, metric="angular"))
    assert json.loads((out / "spade_pruning.json").read_text())["kept"] == [1, 2, 3]
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_scores_from_another_model_are_refused(source, tmp_path):
    folder, scores_path, _ = source
    scores = json.loads(scores_path.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**scores, "model_fingerprint": "0123456789abcdef"}))
    with pytest.raises(ValueError, match=r"computed on another model \(fingerprint 0123456789abcdef.*spade score"):
        prune_checkpoint(PruneConfig(model=str(folder), scores=str(other), out=str(tmp_path / "o"), keep=2))
    deeper = scores_for({"wli": [1.0] * 6}, fingerprint=scores["model_fingerprint"])
    other.write_text(json.dumps(deeper))
    with pytest.raises(ValueError, match="is for a 6-layer model but .* has 4 layers"):
        prune_checkpoint(PruneConfig(model=str(folder), scores=str(other), out=str(tmp_path / "o"), keep=2))
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match="make one with `spade score`"):
        prune_checkpoint(PruneConfig(model=str(folder), scores=str(tmp_path / "none.json"), out=str(tmp_path / "o"),
                                     keep=2))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "precious.txt").write_text("x")
    with pytest.raises(ValueError, match="not a pruned model folder"):
        prune_checkpoint(PruneConfig(model=str(folder), scores=str(scores_path), out=str(tmp_path / "taken"), keep=2))


def test_cli_prune(source, tmp_path, capsys):
    folder, scores, _ = source
    recipe = tmp_path / "prune.yaml"
    recipe.write_text("ratio: 0.5\nmetric: angular\n")
    out = tmp_path / "cli-out"
    assert main(["prune", "--model", str(folder), "--scores", str(scores), "--keep", "3", "-o", str(out),
                 "--recipe", str(recipe), "keep_last=true"]) == 0
    assert "kept 3 of 4 layers [1, 2, 3] by angular" in capsys.readouterr().out
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3
    capsys.readouterr()
    assert main(["prune", "--model", str(folder), "--scores", str(scores), "--ratio", "1.5", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("spade prune: error: ratio 1.5") and "(0, 1)" in err


def test_prune_checkpoint_prints_the_kept_and_removed_layers_for_every_caller(source, tmp_path, capsys):
    folder, scores, _ = source
    said = "kept 2 of 4 layers [0, 3] by wli; removed [1, 2]"
    prune_checkpoint(PruneConfig(model=str(folder), scores=str(scores), out=str(tmp_path / "a"), ratio=0.5))
    assert said in capsys.readouterr().out  # `spade compress` calls the stage function, not the CLI
    assert main(["prune", "--model", str(folder), "--scores", str(scores), "--ratio", "0.5",
                 "-o", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.count(said) == 1


def test_cli_prune_names_a_wrong_input_before_a_missing_one(source, tmp_path, capsys):
    folder, scores, _ = source
    for argv, says in ((["--scores", str(tmp_path / "missing.json")], "missing.json not found"),
                       (["--model", str(tmp_path / "nowhere"), "--metric", "first", "--keep", "2"], "no model in"),
                       (["--model", str(folder), "--scores", str(scores), "--keep", "2"], "no output folder")):
        assert main(["prune", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err, err


def test_cli_prune_builtin_model_by_first_layers_loads_as_tts(tmp_path, capsys):
    from spade_tts.families import BUILTIN_MODEL
    from spade_tts.families.registry import load_speech_lm

    n = json.loads((BUILTIN_MODEL / "config.json").read_text())["num_hidden_layers"]
    out = tmp_path / "first-half"
    assert main(["prune", "--metric", "first", "--ratio", "0.5", "-o", str(out)]) == 0
    assert f"kept {n // 2} of {n} layers {list(range(n // 2))} by first" in capsys.readouterr().out
    tts = load_speech_lm(out)
    assert tts.family == "builtin"
    assert tts.lm.config.num_hidden_layers == n // 2 and len(tts.lm.model.layers) == n // 2
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert main(["prune", "--ratio", "0.5", "-o", str(tmp_path / "x")]) == 2
    assert "needs a scores file" in capsys.readouterr().err


def test_cli_help_teaches_prune():
    out = subprocess.run([sys.executable, "-m", "spade_tts.cli", "prune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "fraction of layers to REMOVE" in out.stdout and "needs no scores" in out.stdout
