"""Layer importance on a tiny trained reference LM: WLI through real synthesis and Whisper, and the proxies.

A layer whose attention and MLP output projections are zeroed is an exact identity, so skipping
it must leave everything unchanged: the same speech, the same WER, zero block influence and zero
loss rise. That pins down the whole pipeline without trusting any number from the model itself.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

import spade_tts.synthesis as synthesis
from spade_tts.evaluation.items import heldout_eval_items
from spade_tts.families.builtin import BuiltinSpeechLM
from spade_tts.importance.layer_importance import (ScoreConfig, iterative_removal, proxy_sequences, rank_correlation,
                                                  score_layers, wli_stability)
from spade_tts.importance.teacher_forced import block_similarity, sequence_batch, speech_loss

IDENTITY_LAYER = 1


@pytest.fixture(scope="module")
def identity_model(tiny_reference, tmp_path_factory):
    """The tiny reference model with layer 1 turned into an exact identity."""
    out = tmp_path_factory.mktemp("identity_model")
    model = LlamaForCausalLM.from_pretrained(tiny_reference, dtype=torch.float32)
    layer = model.model.layers[IDENTITY_LAYER]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(out)
    for f in ("spade_vocab.json", "codec.json", "codec.safetensors"):
        shutil.copy(tiny_reference / f, out / f)
    return out


@pytest.fixture(scope="module")
def scored(identity_model, tiny_corpus, tmp_path_factory):
    corpus, _, _ = tiny_corpus
    out = tmp_path_factory.mktemp("score")
    cfg = ScoreConfig(model=str(identity_model), corpus_dir=str(corpus), items_per_speaker=1,
                      batch_size=4, keep=2, out_dir=str(out), json=str(out / "copy.json"), iterative=True,
                      iterative_metric="tf_loss_rise")
    return cfg, score_layers(cfg)


def test_skipping_an_identity_layer_changes_nothing(scored):
    _, res = scored
    layers = res["layers"]
    assert res["num_layers"] == 4 and res["items"] == 2 and res["full_wer"] is not None
    assert layers[IDENTITY_LAYER]["wli"] == res["full_wer"]
    runs = json.loads((Path(scored[0].out_dir) / "state.json").read_text())["runs"]
    # WLI averages each item's WER capped at 100 %; the plain mean is kept beside it
    for row in layers:
        wers = [r["wer"] for r in runs[f"skip:{row['layer']}"]["per_item"]]
        assert row["wli"] == pytest.approx(sum(min(w, 1.0) for w in wers) / len(wers))
        assert row["wli_uncapped"] == pytest.approx(sum(wers) / len(wers)) and row["wli_uncapped"] >= row["wli"]
        assert row["wli_ci95"][0] <= row["wli"] + 1e-12 and row["wli"] <= row["wli_ci95"][1] + 1e-12
    assert res["wli_stability"]["items"] == 2 and len(res["wli_stability"]["kept_fraction"]) == 4
    full_items = runs["skip:"]["per_item"]
    assert runs[f"skip:{IDENTITY_LAYER}"]["per_item"] == full_items  # same audio length and transcript, item by item
    # while skipping a real layer does change what is spoken (so the skip is really applied)
    assert any(runs[f"skip:{i}"]["per_item"] != full_items for i in (0, 2, 3))
    assert layers[IDENTITY_LAYER]["block_influence"] < 1e-6
    assert abs(layers[IDENTITY_LAYER]["tf_loss_rise"]) < 1e-5
    others = [row for row in layers if row["layer"] != IDENTITY_LAYER]
    assert all(row["block_influence"] > 1e-4 and row["angular"] > 1e-4 for row in others)
    # the iterative teacher-forced mode removes the free layer first
    assert res["iterative"]["removed_order"][0] == IDENTITY_LAYER
    assert len(res["iterative"]["kept"]) == 2


def test_score_outputs_json_csv_plot_and_comparisons(scored):
    cfg, res = scored
    cfg_out = Path(cfg.out_dir)
    on_disk = json.loads((cfg_out / "scores.json").read_text())
    assert on_disk == json.loads(open(cfg.json).read()) == json.loads(json.dumps(res))
    assert [row["layer"] for row in on_disk["layers"]] == [0, 1, 2, 3]
    rho = on_disk["spearman"]
    assert set(rho) == set(on_disk["metrics"]) and rho["block_influence"]["block_influence"] == pytest.approx(1)
    assert rho["block_influence"]["angular"] == pytest.approx(1)  # the same angle on another scale: same ranking
    csv_lines = (cfg_out / "scores.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == ["layer"] + on_disk["metrics"] and len(csv_lines) == 5
    import matplotlib.image

    assert matplotlib.image.imread(cfg_out / "importance.png").shape[0] > 100
    cut = on_disk["cut_to_keep"]
    assert cut["first"]["keep"] == [0, 1]
    assert all(len(sel["keep"]) == 2 and 0 <= sel["wer"] for sel in cut.values())


def test_a_finished_score_run_is_not_redone_and_a_lost_layer_is(scored, monkeypatch):
    cfg, res = scored
    calls = []
    original = synthesis.synthesize

    def counting(*args, **kwargs):
        calls.append(kwargs.get("progress"))
        return original(*args, **kwargs)

    monkeypatch.setattr(synthesis, "synthesize", counting)
    again = score_layers(cfg)
    assert calls == [] and again["layers"] == res["layers"]
    state_path = Path(cfg.out_dir) / "state.json"
    state = json.loads(state_path.read_text())
    del state["runs"]["skip:2"]
    state_path.write_text(json.dumps(state))
    again = score_layers(cfg)
    assert calls == ["skip:2"] and again["layers"][2]["wli"] == res["layers"][2]["wli"]


def test_hooked_block_influence_matches_hidden_states(tiny_reference, tiny_corpus):
    corpus, _, _ = tiny_corpus
    tts = BuiltinSpeechLM.from_pretrained(tiny_reference)
    items = heldout_eval_items(corpus, 1, 4.0, 0)
    batch = sequence_batch(proxy_sequences(tts, ScoreConfig(), items), tts.pad_id)
    got = block_similarity(tts.lm, tts.lm.model.layers, batch, chunk=1)
    with torch.no_grad():
        hs = tts.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states
    sel = batch.target_mask
    for i in range(len(hs) - 2):  # the last entry is after the final norm, so the last layer is left out here
        cos = torch.nn.functional.cosine_similarity(hs[i][sel], hs[i + 1][sel], dim=-1)
        assert got["block_influence"][i] == pytest.approx(float(1 - cos.mean()), rel=1e-4, abs=1e-6)


def test_speech_loss_of_length_sorted_cut_chunks_equals_one_padded_forward(tiny_reference, tiny_corpus):
    corpus, _, _ = tiny_corpus
    tts = BuiltinSpeechLM.from_pretrained(tiny_reference)
    batch = sequence_batch(proxy_sequences(tts, ScoreConfig(), heldout_eval_items(corpus, 2, 4.0, 0)), tts.pad_id)
    lengths = batch.attention_mask.sum(1)
    assert lengths.min() < lengths.max()  # the cut has padding to remove
    with torch.no_grad():
        logits = tts.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    sel = batch.target_mask[:, :-1]
    ref = torch.nn.functional.cross_entropy(logits[:, :-1][sel], batch.input_ids[:, 1:][sel]).item()
    for chunk in (1, 3):
        assert speech_loss(tts.lm, batch, chunk=chunk) == pytest.approx(ref, rel=1e-5)


def test_teacher_forced_sequences_are_the_built_in_training_layout(tiny_reference, tiny_corpus):
    """The proxies read each item as the model was trained on it: prompt speech as recorded, then the target's
    phones each followed by the frames spoken during it; the loss starts after the prompt's speech."""
    from spade_tts.audio import load_audio
    from spade_tts.reference.vocab import frames_per_phone

    corpus, _, _ = tiny_corpus
    tts = BuiltinSpeechLM.from_pretrained(tiny_reference)
    items = heldout_eval_items(corpus, 1, 4.0, 0)
    for it, (ids, loss_from) in zip(items, proxy_sequences(tts, ScoreConfig(), items)):
        v, codec = tts.vocab, tts.codec
        p_codes, t_codes = codec.encode(load_audio(it["prompt_wav"])), codec.encode(load_audio(it["reference_wav"]))
        p_ph, t_ph = v.phone_ids([p for p, _ in it["prompt_phones"]]), v.phone_ids([p for p, _ in it["target_phones"]])
        frames = frames_per_phone([e for _, e in it["target_phones"]], 100, len(t_codes))
        expected, start = v.training_ids(p_ph, t_ph, p_codes, t_codes, frames)
        assert ids == expected and loss_from == start


def test_builtin_wli_synthesis_equals_the_implementation_it_replaced(scored):
    """The built-in model's WLI runs speak exactly what the phone-forced loop it replaced spoke (frozen in
    tests/builtin_oracle.py): same codes, so the same audio length and the same stored runs, layer by layer."""
    import builtin_oracle

    from spade_tts.audio import load_audio
    from spade_tts.pruning.layers import skip_layers

    cfg, _ = scored
    tts = BuiltinSpeechLM.from_pretrained(cfg.model)
    v, codec = tts.vocab, tts.codec
    items = heldout_eval_items(cfg.corpus_dir, cfg.items_per_speaker, cfg.max_prompt_seconds, cfg.seed)
    prompts, targets, caps = [], [], []
    for it in items:
        from spade_tts.data.voices import g2p

        p_codes, p_ph, t_ph = codec.encode(load_audio(it["prompt_wav"])), v.phone_ids(g2p(it["prompt_text"])), \
            v.phone_ids(g2p(it["target_text"]))
        prompts.append(v.prompt_ids(p_ph, t_ph, p_codes))
        targets.append(t_ph)
        caps.append(max(cfg.max_length_ratio * len(p_codes) / max(1, len(p_ph)) * len(t_ph), 100))
    runs = json.loads((Path(cfg.out_dir) / "state.json").read_text())["runs"]
    settings = builtin_oracle.GenerationSettings(max_length_ratio=cfg.max_length_ratio)
    for skip in ([], [0], [2]):
        with skip_layers(tts.lm, skip):
            old = builtin_oracle.generate_codes(tts.lm, v, prompts, targets, 100, settings,
                                                item_ids=range(len(items)), max_codes=caps)
        stored = runs["skip:" + ",".join(map(str, skip))]["per_item"]
        assert [len(codec.decode(c, seed=0)) / 16000 for c, _, _ in old] == [r["seconds"] for r in stored]
        assert [cut for _, _, cut in old] == [r["truncated"] for r in stored]


def test_wli_stability_sees_a_ranking_made_by_one_outlier_item():
    import numpy as np

    rng = np.random.default_rng(0)
    per_item = rng.uniform(0.2, 0.8, (4, 40))
    per_item[0] += 0.5  # layer 0 matters on every item: always kept
    stable = wli_stability(per_item, keep=1, resamples=300)
    assert stable["kept_set"] == [0] and stable["kept_set_agreement"] == 1.0 and stable["kept_fraction"][0] == 1.0
    lo, hi = stable["wli_ci95"][0]
    assert lo < per_item[0].mean() < hi
    per_item[3, 7] = 40.0  # one babbling item transcribed as 40x the words: layer 3 "wins" on it alone
    lucky = wli_stability(per_item, keep=1, resamples=300)
    assert lucky["kept_set"] == [3] and 0.5 < lucky["kept_set_agreement"] < 0.8  # absent from ~37 % of resamples
    capped = wli_stability(np.minimum(per_item, 1.0), keep=1, resamples=300)
    assert capped["kept_set"] == [0]


def test_rank_correlation_is_null_when_undefined():
    assert rank_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert rank_correlation([1.0, 2.0, 3.0], [30.0, 20.0, 10.0]) == pytest.approx(-1)


def test_iterative_removal_rescores_after_each_removal():
    # layers 0 and 1 are redundant copies: either alone is cheap to remove, both together are not
    base = {0: 1.0, 1: 1.0, 2: 3.0, 3: 0.5}

    def score_of(removed, i):
        pair_penalty = 10.0 if {0, 1} <= set(removed + [i]) else 0.0
        return base[i] + pair_penalty

    assert iterative_removal(4, 2, score_of) == [3, 0]  # one-shot by base scores would drop 3 and 0 too, then 1
    assert iterative_removal(4, 1, score_of) == [3, 0, 2]
    rounds = []
    assert iterative_removal(4, 2, score_of, prefetch=lambda removed, rest: rounds.append((list(removed), rest))) == [3, 0]
    assert rounds == [([], [0, 1, 2, 3]), ([3], [0, 1, 2])]  # each round's candidates announced before scoring


def test_bad_score_settings_are_clear(tiny_reference, tiny_corpus, tmp_path):
    corpus, _, _ = tiny_corpus
    with pytest.raises(ValueError, match="keep=4 must be between 1 and 3"):
        score_layers(ScoreConfig(model=str(tiny_reference), corpus_dir=str(corpus), keep=4, out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="iterative_metric"):
        score_layers(ScoreConfig(model=str(tiny_reference), corpus_dir=str(corpus), iterative_metric="bogus"))
    with pytest.raises(ValueError, match="compiled again for every skipped layer"):
        score_layers(ScoreConfig(model=str(tiny_reference), corpus_dir=str(corpus), decoder="static-int8-compiled"))


def test_scores_do_not_depend_on_batching_or_overlap(scored, tmp_path):
    """Run one item at a time, with no transcription overlapped: every run's transcripts are the same."""
    cfg, _ = scored
    serial = ScoreConfig(model=cfg.model, corpus_dir=cfg.corpus_dir, items_per_speaker=1, batch_size=1, keep=2,
                         out_dir=str(tmp_path), overlap_asr=False, compare=False)
    score_layers(serial)
    a = json.loads((Path(cfg.out_dir) / "state.json").read_text())["runs"]
    b = json.loads((tmp_path / "state.json").read_text())["runs"]
    assert set(b) <= set(a) and len(b) == 5
    assert all(a[k]["per_item"] == b[k]["per_item"] for k in b)


def test_two_processes_share_the_runs_and_give_the_same_scores(scored, tmp_path):
    """`accelerate launch --num_processes 2 -m spade_tts.importance`: each process takes every other run."""
    import socket
    import subprocess
    import sys

    cfg, _ = scored
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    args = [f"model={cfg.model}", f"corpus_dir={cfg.corpus_dir}", "items_per_speaker=1", "batch_size=4", "keep=2",
            f"out_dir={tmp_path}", "compare=false"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           "-m", "spade_tts.importance", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    one = json.loads((Path(cfg.out_dir) / "state.json").read_text())["runs"]
    merged = json.loads((tmp_path / "state.json").read_text())["runs"]
    theirs = json.loads((tmp_path / "state.rank1.json").read_text())["runs"]
    assert len(merged) == 5 and 1 <= len(theirs) < 5  # process 1 synthesized some of the runs, not all
    # the same speech and the same WER per item; not the transcripts: Whisper's hallucination on a sub-second
    # clip ("" or "Thank you.", WER 1.0 either way) follows the process's state, which no sharing decides
    def scored_items(run):
        return [(r["id"], r["wer"], r["seconds"], r["truncated"]) for r in run["per_item"]]
    assert all(scored_items(merged[k]) == scored_items(one[k]) for k in merged)
    ranks = json.loads((tmp_path / "scores.json").read_text())["layers"]
    assert [r["wli"] for r in ranks] == [r["wli"] for r in json.loads((Path(cfg.out_dir) / "scores.json").read_text())["layers"]]
