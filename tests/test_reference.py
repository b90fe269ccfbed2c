"""The reference LLM-TTS end to end on a tiny corpus: layout, training, resume, export, synthesis."""
import json

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from spade_tts.audio import load_audio
from spade_tts.data.build import read_jsonl
from spade_tts.families.builtin import BuiltinSpeechLM
from spade_tts.reference.dataset import PairSampler, TokenStore
from spade_tts.reference.train import ReferenceTrainConfig, train_reference
from spade_tts.reference.vocab import Vocab, frames_per_phone
from spade_tts.synthesis import synthesize

from builtin_helpers import phone_forced

TINY = dict(layers=2, hidden=32, heads=2, kv_heads=2, intermediate=64, batch_size=4, warmup=2, log_every=1,
            max_prompt_seconds=30.0, max_target_seconds=30.0, loader_workers=1)


def test_frames_per_phone_sums_and_respects_order():
    assert frames_per_phone([0.1, 0.25, 0.3], 100, 31) == [10, 15, 6]
    assert sum(frames_per_phone([0.1, 0.12, 0.5], 100, 40)) == 40
    assert frames_per_phone([0.2, 0.1, 0.3], 100, 30) == [20, 0, 10]


def test_training_layout_interleaves_target_phones():
    v = Vocab(10)
    ph = v.phone_ids(["pau", "k", "ae", "t"])
    ids, loss_from = v.training_ids(ph[:2], ph, [1, 2], [3, 4, 5, 6, 7], [1, 2, 0, 2], prompt_loss=True)
    assert ids[loss_from] == v.special("speech_start")
    target_ids, target_from = v.training_ids(ph[:2], ph, [1, 2], [3, 4, 5, 6, 7], [1, 2, 0, 2])
    assert target_ids == ids and target_from == loss_from + 2  # by default the prompt's speech is context only
    s = v.speech_offset
    assert ids[loss_from + 1 :] == [s + 1, s + 2, ph[0], s + 3, ph[1], s + 4, s + 5, ph[2], ph[3], s + 6, s + 7,
                                    v.speech_end]
    assert ids[:2] == [v.special("bos"), v.special("text_start")]
    with pytest.raises(ValueError, match="unknown phone"):
        v.phone_id("xx")


def test_pairs_share_a_speaker_and_differ(tiny_tokens):
    store = TokenStore(tiny_tokens)
    sampler = PairSampler(store, "train", 30, 30, seed=0)
    batch = sampler.batch(0, 4)
    assert batch["input_ids"].shape == batch["labels"].shape
    assert torch.equal(sampler.batch(0, 4)["input_ids"], batch["input_ids"])  # a pure function of the step
    assert not torch.equal(sampler.batch(1, 4)["input_ids"], batch["input_ids"])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_a_killed_tokenization_resumes_at_its_first_unfinished_part_and_matches_one_run(tiny_corpus, tiny_codec,
                                                                                          tmp_path, monkeypatch):
    from spade_tts.codec.tokenizer import SpeechTokenizer
    from spade_tts.reference.dataset import prepare_tokens

    corpus, _, _ = tiny_corpus
    real_encode, calls = SpeechTokenizer.encode, []

    def dies_after_seven(self, audio):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(1)
        return real_encode(self, audio)

    monkeypatch.setattr(SpeechTokenizer, "encode", dies_after_seven)
    threads = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(corpus, tiny_codec, tmp_path, part_size=3)
    assert torch.get_num_threads() == threads  # the encoder's one thread is given back, also on the way out
    assert not (tmp_path / "tokens.safetensors").exists()  # nothing that looks finished
    assert len(list((tmp_path / "parts").glob("*.safetensors"))) == 2  # two whole parts of 3 kept
    calls.clear()
    monkeypatch.setattr(SpeechTokenizer, "encode", lambda self, audio: (calls.append(1), real_encode(self, audio))[1])
    summary = prepare_tokens(corpus, tiny_codec, tmp_path, part_size=3)
    assert len(calls) == summary["utterances"] - 6  # the finished parts were not encoded again
    assert not (tmp_path / "parts").exists()
    prepare_tokens(corpus, tiny_codec, tmp_path / "whole")  # one run over the corpus as it is now
    resumed, whole = TokenStore(tmp_path), TokenStore(tmp_path / "whole")
    assert resumed.items == whole.items
    for name, array in whole.arrays.items():
        assert np.array_equal(resumed.arrays[name], array), name


def test_tokenization_parts_from_another_codec_are_discarded(tiny_corpus, tiny_codec, tmp_path):
    from spade_tts.reference.dataset import prepare_tokens

    corpus, _, _ = tiny_corpus
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "plan.json").write_text(json.dumps({"codec": "another", "utterances": "x", "part_size": 3}))
    (parts / "00000.safetensors").write_text("stale")
    prepare_tokens(corpus, tiny_codec, tmp_path, part_size=3)
    assert TokenStore(tmp_path).codes(0).size > 0  # the stale part would not even load


@pytest.fixture(scope="module")
def trained(tiny_corpus, tiny_codec, tiny_tokens, tmp_path_factory):
    corpus, _, _ = tiny_corpus
    out = tmp_path_factory.mktemp("ref")
    cfg = ReferenceTrainConfig(corpus_dir=str(corpus), codec_dir=str(tiny_codec), tokens_dir=str(tiny_tokens),
                               out_dir=str(out), steps=6, save_every=3, lr=3e-3, **TINY)
    export = train_reference(cfg)
    return cfg, export


def test_training_lowers_loss_and_exports_a_hf_checkpoint(trained):
    cfg, export = trained
    log = [json.loads(l) for l in open(f"{cfg.out_dir}/train_log.jsonl")]
    assert log[-1]["step"] == 6 and log[-1]["loss"] < log[0]["loss"]
    model = LlamaForCausalLM.from_pretrained(export)
    assert model.config.num_hidden_layers == 2
    assert (export / "codec.safetensors").is_file() and Vocab.load(export).num_speech == 32


def test_the_recipes_sampling_is_what_the_exported_folder_samples_with(tiny_tokens, tiny_codec, tmp_path):
    from spade_tts.reference.train import build_model, export

    vocab = Vocab(TokenStore(tiny_tokens).num_speech)
    for temperature, top_p, soft, expected in (
            (0.6, 0.9, True, {"temperature": 0.6, "top_p": 0.9, "soft_codes": True}),
            (None, None, False, {"temperature": 1.0, "top_p": 0.8, "soft_codes": False})):
        cfg = ReferenceTrainConfig(codec_dir=str(tiny_codec), temperature=temperature, top_p=top_p, soft_codes=soft,
                                   **TINY)
        folder = tmp_path / f"export-{temperature}"
        export(build_model(cfg, vocab), vocab, cfg, folder)
        assert BuiltinSpeechLM.from_pretrained(folder).sampling == expected


def test_resumed_training_matches_an_uninterrupted_run(trained, tiny_tokens, tiny_codec, tmp_path):
    cfg, _ = trained
    first = ReferenceTrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path), "steps": 3})
    train_reference(first)  # "killed" after its step-3 checkpoint
    train_reference(ReferenceTrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path)}))
    a = torch.load(f"{cfg.out_dir}/last.pt", weights_only=False)
    b = torch.load(f"{tmp_path}/last.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    best_a = json.load(open(f"{cfg.out_dir}/best.json"))
    best_b = json.load(open(f"{tmp_path}/best.json"))  # the minimum is tracked across the resume
    assert best_a["step"] == best_b["step"]
    assert best_a["heldout_loss"] == pytest.approx(best_b["heldout_loss"], abs=1e-3)


def test_best_folder_holds_the_weights_of_the_lowest_heldout_loss(trained, tiny_tokens):
    cfg, export = trained
    log = [json.loads(l) for l in open(f"{cfg.out_dir}/train_log.jsonl")]
    held = [(r["heldout_loss"], r["step"]) for r in log if r.get("heldout_loss") is not None]
    assert len(held) == 2  # steps 3 and 6
    best = json.load(open(f"{cfg.out_dir}/best.json"))
    assert (best["heldout_loss"], best["step"]) == min(held)
    model = LlamaForCausalLM.from_pretrained(f"{cfg.out_dir}/best").float().eval()
    val = PairSampler(TokenStore(tiny_tokens), "heldout", cfg.max_prompt_seconds, cfg.max_target_seconds, cfg.seed)
    with torch.no_grad():
        loss = np.mean([model(**val.batch(i, cfg.batch_size)).loss.item() for i in range(cfg.heldout_batches)])
    assert loss == pytest.approx(best["heldout_loss"], rel=2e-2)  # float16 export
    final = LlamaForCausalLM.from_pretrained(export)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), final.float().state_dict().values()))
    assert same == (best["step"] == cfg.steps)


def test_synthesis_batched_equals_single_and_guards(trained, tiny_corpus):
    _, export = trained
    corpus, _, _ = tiny_corpus
    tts = BuiltinSpeechLM.from_pretrained(export)
    row = read_jsonl(corpus / "manifests" / "heldout.jsonl")[0]
    prompt = load_audio(corpus / row["audio"])
    # any_move_on=False: an untrained tiny model would otherwise end every phone at once (empty output).
    greedy = tts.generation_defaults(temperature=0.0, max_phone_seconds=0.3, max_seconds=5.0, any_move_on=False)
    texts = ["A short test sentence.", "Another one, a little bit longer than the first."]

    def speak(texts, cfg, batch_size=1):
        return synthesize(tts, texts, [prompt] * len(texts), [row["text"]] * len(texts), cfg, batch_size)

    both = speak(texts, greedy, batch_size=2)
    alone = synthesize(tts, texts[1:], [prompt], [row["text"]], greedy, item_ids=[1])
    np.testing.assert_array_equal(both[1].codes, alone[0].codes)
    for r in both:
        assert r.audio.dtype == np.float32 and len(r.audio) > 0 and r.codes.max() < 32
    sampled = tts.generation_defaults(temperature=1.0, top_p=0.9, seed=3, max_phone_seconds=0.3, any_move_on=False)
    a = speak(texts[:1], sampled)[0].codes
    b = speak(texts[:1], sampled)[0].codes
    np.testing.assert_array_equal(a, b)
    # An untrained model rarely ends phones by itself: the guard must, and says how often.
    tight = tts.generation_defaults(temperature=0.0, max_phone_seconds=0.02, max_seconds=5.0, any_move_on=False)
    r = speak(texts[:1], tight)[0]
    assert r.guard_hits > 0 and not r.truncated
    cut = speak(texts[:1], tts.generation_defaults(temperature=0.0, max_seconds=0.05, any_move_on=False))
    assert cut[0].truncated and len(cut[0].codes) == 5


def test_every_target_phone_is_read_in_order(trained):
    _, export = trained
    tts = BuiltinSpeechLM.from_pretrained(export)
    v = tts.vocab
    target = v.phone_ids(["pau", "hh", "ah", "l", "ow", "pau"])
    prompt = v.prompt_ids(v.phone_ids(["pau", "ah", "pau"]), target, [1, 2, 3])
    seen = []
    orig = tts.lm.forward

    def spy(*args, **kw):
        ids = kw["input_ids"]
        if ids.shape[1] == 1:
            seen.append(int(ids[0, 0]))
        return orig(*args, **kw)

    tts.lm.forward = spy
    phone_forced(tts, [prompt], [target], temperature=1.0, max_phone_seconds=0.05, decoder="hf")
    assert [t for t in seen if v.is_phone(t)] == target[1:]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_decoder_speaks_exactly_like_hf_forward(trained, temperature):
    """The fast path (preallocated cache, trimmed head) must not change a single code, batched or not."""
    _, export = trained
    tts = BuiltinSpeechLM.from_pretrained(export)
    v = tts.vocab
    targets = [v.phone_ids(["pau", "hh", "ah", "l", "ow", "pau"]), v.phone_ids(["pau", "k", "ae", "t", "pau"])]
    prompts = [v.prompt_ids(v.phone_ids(["pau", "ah", "pau"]), targets[0], [1, 2, 3]),
               v.prompt_ids(v.phone_ids(["pau", "iy", "pau"]), targets[1], [4, 5, 6, 7, 8, 9])]
    kw = dict(temperature=temperature, top_p=0.9, seed=5, max_phone_seconds=0.1, any_move_on=False)
    fast = phone_forced(tts, prompts, targets, decoder="static", **kw)
    ref = phone_forced(tts, prompts, targets, decoder="hf", **kw)
    assert fast == ref and all(len(codes) > 0 for codes, _, _ in fast)
    # int8 weights (lossy): still reads every phone, in order, and emits only valid codes
    int8 = phone_forced(tts, prompts, targets, decoder="static-int8", **kw)
    assert all(0 < len(codes) and 0 <= min(codes) and max(codes) < v.num_speech for codes, _, _ in int8)
    with pytest.raises(ValueError, match="decoder="):
        phone_forced(tts, prompts, targets, decoder="bogus")


def test_missing_model_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        BuiltinSpeechLM.from_pretrained(tmp_path)


def test_eval_items_pair_each_target_with_another_utterance_of_its_speaker(tiny_corpus):
    from spade_tts.evaluation.items import heldout_eval_items

    corpus, _, _ = tiny_corpus
    items = heldout_eval_items(corpus, per_speaker=3, max_prompt_seconds=30, seed=0)
    assert len(items) == 6 and {it["speaker"] for it in items} == {"flite_slt", "flite_rms"}
    speaker_of = {r["id"]: r["speaker"] for r in read_jsonl(corpus / "manifests" / "heldout.jsonl")}
    for it in items:
        assert speaker_of[it["prompt_id"]] == speaker_of[it["id"]] == it["speaker"]
        assert it["prompt_id"] != it["id"] and it["prompt_text"] != it["target_text"]
        assert it["target_phones"] and it["prompt_phones"]
    assert heldout_eval_items(corpus, 3, 30, seed=0) == items


def test_sampled_items_do_not_depend_on_their_batch(trained):
    """Each item owns its random stream: batched (with rows leaving as they end) == one by one."""
    _, export = trained
    tts = BuiltinSpeechLM.from_pretrained(export)
    v = tts.vocab
    targets = [v.phone_ids(["pau", "hh", "ah", "l", "ow", "pau"]), v.phone_ids(["pau", "k", "ae", "t", "pau"]),
               v.phone_ids(["pau", "s", "iy", "pau"])]
    prompts = [v.prompt_ids(v.phone_ids(["pau", "ah", "pau"]), t, list(range(1, 4 + 3 * i)))
               for i, t in enumerate(targets)]
    settings = dict(temperature=1.0, top_p=0.9, seed=3, max_phone_seconds=0.1)
    batched = phone_forced(tts, prompts, targets, **settings)
    alone = [phone_forced(tts, [p], [t], item_ids=[i], **settings)[0] for i, (p, t) in enumerate(zip(prompts, targets))]
    assert batched == alone
    assert len({len(c) for c, _, _ in batched}) > 1  # rows ended at different steps, so some left the batch
    other_seed = phone_forced(tts, prompts, targets, temperature=1.0, top_p=0.9, seed=4, max_phone_seconds=0.1)
    assert other_seed != batched


def test_length_ratio_cuts_a_runaway_item(trained):
    _, export = trained
    tts = BuiltinSpeechLM.from_pretrained(export)
    v = tts.vocab
    target = v.phone_ids(["pau", "hh", "ah", "l", "ow", "pau"])
    prompt = v.prompt_ids(v.phone_ids(["pau", "ah", "pau"]), target, [1, 2, 3])
    settings = dict(temperature=1.0, seed=0, max_phone_seconds=0.5)
    (free, _, free_cut), = phone_forced(tts, [prompt], [target], **settings)
    assert len(free) >= 2 and not free_cut
    (codes, _, cut), = phone_forced(tts, [prompt], [target], max_seconds=(len(free) - 1) / 100, **settings)
    assert codes == free[:-1] and cut  # the same stream, cut one code early
    # max_length_ratio: the cap is the prompt's speech tokens per phone x the target's phones (at least 1 s)
    request = tts.generation_request("Hello there, this is a much longer sentence than the prompt.", "Ah.",
                                     np.arange(3))
    sampler = tts.sampler([request], tts.generation_defaults(max_length_ratio=1.0), [0])
    assert sampler.caps == [100] and tts.sampler([request], tts.generation_defaults(), [0]).caps == [2000]


def test_a_time_budget_spans_resumed_runs_and_a_spent_one_only_re_exports(tiny_corpus, tiny_codec, tiny_tokens,
                                                                           tmp_path):
    corpus, _, _ = tiny_corpus
    cfg = ReferenceTrainConfig(corpus_dir=str(corpus), codec_dir=str(tiny_codec), tokens_dir=str(tiny_tokens),
                               out_dir=str(tmp_path), steps=10_000, save_every=1000, time_budget_minutes=0.03,
                               **TINY)
    train_reference(cfg)
    spent = torch.load(tmp_path / "last.pt", weights_only=False)
    assert 0 < spent["step"] < 10_000 and spent["seconds"] >= 1.8
    train_reference(cfg)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == spent["step"]


def test_the_head_at_counted_positions_gives_the_models_own_loss_and_gradients(tiny_tokens):
    from spade_tts.reference.train import build_model, next_token_loss

    store = TokenStore(str(tiny_tokens))
    vocab = Vocab(store.num_speech)
    batch = PairSampler(store, "train", 30.0, 30.0, 0, False).batch(0, 4)
    assert 0 < (batch["labels"] != -100).float().mean() < 1  # some positions count, some do not
    torch.manual_seed(0)
    model = build_model(ReferenceTrainConfig(**{k: v for k, v in TINY.items() if k in ("layers", "hidden", "heads",
                                                                                   "kv_heads", "intermediate")}), vocab)
    grads = []
    for counted_only in (False, True):
        model.zero_grad()
        loss = next_token_loss(model, batch, counted_only)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_run_can_start_from_an_exported_model_and_refuses_another_shape(trained, tmp_path):
    """init_from: a fresh run (new optimizer and schedule) starting from an exported folder's weights."""
    cfg, export = trained
    again = ReferenceTrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "more"), "init_from": str(export),
                                    "steps": 1, "lr": 0.0, "save_every": 1})
    out = train_reference(again)  # lr 0: the one step leaves the weights where they started
    start, end = LlamaForCausalLM.from_pretrained(export), LlamaForCausalLM.from_pretrained(out)
    for (name, a), b in zip(start.state_dict().items(), end.state_dict().values()):
        assert torch.equal(a, b), name
    log = [json.loads(l) for l in open(tmp_path / "more" / "train_log.jsonl")]
    fresh = [json.loads(l) for l in open(f"{cfg.out_dir}/train_log.jsonl")]
    assert log[0]["loss"] < fresh[0]["loss"]  # it starts where the exported model ended, not from noise
    wrong = ReferenceTrainConfig(**{**again.__dict__, "out_dir": str(tmp_path / "wrong"), "layers": 3})
    with pytest.raises(ValueError, match="is 2 layers x .* but this recipe builds 3 layers") as err:
        train_reference(wrong)
    assert "\n" not in str(err.value)
