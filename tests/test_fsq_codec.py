"""The learned FSQ tokenizer: codes and values agree, it trains and resumes, it saves and loads as a codec."""
import json

import numpy as np
import pytest
import torch

from spade_tts.audio import load_audio
from spade_tts.codec import load_tokenizer
from spade_tts.codec.fsq import FSQ, FSQConfig, FSQTokenizer, MelFSQ
from spade_tts.codec.fsq_train import train_fsq
from spade_tts.codec.mel import MelAnalyzer
from spade_tts.codec.train import CodecFitConfig, fit_codec
from spade_tts.data.build import read_jsonl

SMALL = dict(levels=[5, 4, 3], channels=16, blocks=2)


def test_codes_are_mixed_radix_digits_and_map_back_to_the_quantized_values():
    fsq = FSQ([8, 6, 5, 4])
    z = torch.randn(3, 4, 50) * 3
    values, codes = fsq(z)
    assert codes.min() >= 0 and codes.max() < 8 * 6 * 5 * 4
    assert values.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(fsq.values(codes), values)
    # every level of every channel is reachable: a grid of inputs produces all 960 codes
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-4, 4, 41)] * 4, indexing="ij")).reshape(4, 1, -1)
    assert fsq(grid.transpose(0, 1))[1].unique().numel() == 960


def test_straight_through_rounding_passes_gradients_to_the_encoder():
    z = torch.randn(2, 3, 7, requires_grad=True)
    FSQ([5, 4, 3])(z)[0].sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def corpus_mels(tiny_corpus):
    corpus, _, _ = tiny_corpus
    analyzer = MelAnalyzer(FSQConfig().spec)
    rows = read_jsonl(corpus / "manifests" / "train.jsonl")
    return [analyzer.log_mel(load_audio(corpus / r["audio"])) for r in rows]


def test_training_lowers_the_reconstruction_error_and_a_finished_run_is_not_redone(corpus_mels, tmp_path):
    cfg = FSQConfig(**SMALL)
    # a step budget, not minutes: on a busy machine a few seconds make fewer than the 2 logged points (every 50 steps)
    tok = train_fsq(cfg, corpus_mels, tmp_path, minutes=0.0, batch_size=4, steps=150)
    state = torch.load(tmp_path / "fsq_train.pt", weights_only=False)["state"]
    assert len(state["log"]) == 3 and state["log"][-1]["l1"] < state["log"][0]["l1"]
    again = train_fsq(cfg, corpus_mels, tmp_path, minutes=0.0, batch_size=4, steps=150)
    assert torch.load(tmp_path / "fsq_train.pt", weights_only=False)["state"]["steps"] == state["steps"]
    for a, b in zip(tok.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="delete it or pick another out_dir"):
        train_fsq(FSQConfig(levels=[4, 4], channels=16, blocks=2), corpus_mels, tmp_path, minutes=0.15)


def test_a_stopped_run_resumes_and_trains_to_its_budget(corpus_mels, tmp_path):
    cfg = FSQConfig(**SMALL)
    train_fsq(cfg, corpus_mels, tmp_path, minutes=0.05, batch_size=4)
    first = torch.load(tmp_path / "fsq_train.pt", weights_only=False)["state"]
    train_fsq(cfg, corpus_mels, tmp_path, minutes=0.1, batch_size=4)  # the budget raised: it continues
    second = torch.load(tmp_path / "fsq_train.pt", weights_only=False)["state"]
    assert second["steps"] > first["steps"] and second["seconds"] >= 6.0


def test_saved_tokenizer_loads_by_kind_and_round_trips_audio(corpus_mels, tiny_corpus, tiny_codec, tmp_path):
    corpus, _, _ = tiny_corpus
    cfg = FSQConfig(**SMALL)
    torch.manual_seed(0)
    net = MelFSQ(cfg)
    mean, std = torch.randn(80), torch.rand(80) + 0.5
    FSQTokenizer(cfg, net, mean, std).save(tmp_path)
    assert json.loads((tmp_path / "codec.json").read_text())["kind"] == "fsq"
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, FSQTokenizer) and tok.vocab_size == 60 and tok.config.tokens_per_second == 50
    audio = load_audio(corpus / read_jsonl(corpus / "manifests" / "heldout.jsonl")[0]["audio"])
    codes = tok.encode(audio)
    assert codes.dtype == np.int64 and len(codes) == len(tok.mel.log_mel(audio)) // 2
    net.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})  # as saved: float16 weights
    fresh = FSQTokenizer(cfg, net, mean, std)
    np.testing.assert_array_equal(codes, fresh.encode(audio))
    np.testing.assert_allclose(tok.decode_mel(codes), fresh.decode_mel(codes), rtol=1e-5, atol=1e-5)
    out = tok.decode(codes)
    assert out.dtype == np.float32 and abs(len(out) - len(codes) * 320) <= 320
    with pytest.raises(ValueError, match=r"speech tokens must lie in \[0, 60\)"):
        tok.decode_mel([0, 60])
    assert load_tokenizer(tiny_codec).vocab_size == 32  # the k-means codec loads through the same door


def test_codec_fit_refuses_an_unknown_kind_before_reading_any_audio(tmp_path):
    with pytest.raises(ValueError, match="kind='vq' is not a tokenizer kind"):
        fit_codec(CodecFitConfig(corpus_dir=str(tmp_path / "absent"), kind="vq"))
    with pytest.raises(FileNotFoundError, match="run `spade codec fit`"):
        load_tokenizer(tmp_path)


def test_a_step_budget_stops_at_exactly_that_many_steps_however_busy_the_machine(corpus_mels, tmp_path):
    cfg = FSQConfig(**SMALL)
    train_fsq(cfg, corpus_mels, tmp_path, minutes=0.0, batch_size=4, steps=6)
    assert torch.load(tmp_path / "fsq_train.pt", weights_only=False)["state"]["steps"] == 6
    train_fsq(cfg, corpus_mels, tmp_path, minutes=0.0, batch_size=4, steps=9)  # resumed with a larger budget
    state = torch.load(tmp_path / "fsq_train.pt", weights_only=False)["state"]
    assert state["steps"] == 9 and state["seconds"] > 0


@pytest.mark.parametrize("kind", ["fsq", "kmeans"])
def test_code_embedding_init_makes_the_speech_rows_a_linear_function_of_the_codec_features(kind):
    from spade_tts.codec.tokenizer import CodecConfig, SpeechTokenizer
    from spade_tts.reference.train import ReferenceTrainConfig, build_model, init_speech_embedding
    from spade_tts.reference.vocab import Vocab

    torch.manual_seed(0)
    if kind == "fsq":
        cfg = FSQConfig(**SMALL)
        tok = FSQTokenizer(cfg, MelFSQ(cfg), torch.zeros(80), torch.ones(80))
    else:
        tok = SpeechTokenizer(CodecConfig(codebook_size=200), torch.randn(200, 80))
    feats = tok.code_features()
    assert feats.shape[0] == tok.vocab_size
    vocab = Vocab(tok.vocab_size)
    model = build_model(ReferenceTrainConfig(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64), vocab)
    before = model.get_input_embeddings().weight.detach().clone()
    init_speech_embedding(model, vocab, feats, seed=0)
    emb = model.get_input_embeddings().weight.detach()
    rows = emb[vocab.speech_offset:]
    torch.testing.assert_close(emb[:vocab.speech_offset], before[:vocab.speech_offset])  # phones, specials untouched
    assert abs(rows.std().item() - model.config.initializer_range) < 1e-3
    design = torch.cat([feats.float(), torch.ones(len(feats), 1)], dim=1)
    def misfit(y):  # of the best affine function of the features (pinv: FSQ's one-hot blocks are rank-deficient)
        return (design.double() @ (torch.linalg.pinv(design.double()) @ y.double()) - y.double()).abs().max()

    assert misfit(rows) < 1e-5  # exactly linear in the features
    assert misfit(before[vocab.speech_offset:]) > 1e-3  # which noise is not
    if kind == "fsq":  # digits add up: changing channel 0 from 0 to 1 moves every code by the same vector
        radix = 1
        assert torch.allclose(rows[1] - rows[0], rows[1 + 5 * radix] - rows[0 + 5 * radix], atol=1e-6)
    with pytest.raises(ValueError, match="tokenize the corpus with the same codec"):
        init_speech_embedding(model, Vocab(tok.vocab_size + 1), feats, seed=0)
