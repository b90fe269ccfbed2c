"""CosyVoice 2 adapter on a tiny random-weight Qwen2LM with the real key names, vocabulary sizes and token ids.

The checkpoint is written as upstream ships it: ``llm.pt`` (the state dict of a module built here
the way upstream's ``Qwen2LM``/``Qwen2Encoder`` are, independently of the adapter's class),
``CosyVoice-BlankEN/`` (Qwen2 config with the real 151,936-row vocabulary, tokenizer, weights) and
``cosyvoice2.yaml``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from family_chain import QWEN2_SPECIALS, run_chain, save_tiny_qwen2, word_level_tokenizer
from family_chain import skip_if_installed

QWEN_VOCAB = 151936
SPEECH = QWEN_VOCAB + 2  # unified id of speech token 0
END = SPEECH + 6561


class Qwen2Encoder(nn.Module):  # upstream: cosyvoice.llm.llm.Qwen2Encoder
    def __init__(self, path):
        super().__init__()
        from transformers import Qwen2ForCausalLM

        self.model = Qwen2ForCausalLM.from_pretrained(path)


class UpstreamQwen2LM(nn.Module):  # upstream: cosyvoice.llm.llm.Qwen2LM (parameters only)
    def __init__(self, path, d=32, speech_token_size=6561):
        super().__init__()
        self.llm_embedding = nn.Embedding(2, d)
        self.llm = Qwen2Encoder(path)
        self.llm_decoder = nn.Linear(d, speech_token_size + 3)
        self.speech_embedding = nn.Embedding(speech_token_size + 3, d)


def build_cosyvoice(out, layers: int = 4):
    tok = word_level_tokenizer(QWEN_VOCAB, dict(QWEN2_SPECIALS), eos="<|endoftext|>", pad="<|endoftext|>")
    blank = save_tiny_qwen2(out / "CosyVoice-BlankEN", QWEN_VOCAB, tok, layers=layers, eos_token_id=151643,
                            bos_token_id=151643)
    torch.manual_seed(1)
    up = UpstreamQwen2LM(blank)
    with torch.no_grad():
        up.speech_embedding.weight.normal_(0, 0.5)
        up.llm_embedding.weight.normal_(0, 0.5)
        up.llm_decoder.weight.normal_(0, 0.5)
    torch.save(up.state_dict(), out / "llm.pt")
    (out / "cosyvoice2.yaml").write_text("qwen_pretrain_path: ''\nllm: {speech_token_size: 6561}\n")
    (out / "flow.pt").write_bytes(b"flow")
    return out


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    return build_cosyvoice(tmp_path_factory.mktemp("cosyvoice") / "ckpt")


@pytest.fixture(scope="module")
def cv(cv_dir):
    from spade_tts.families.registry import load_speech_lm

    return load_speech_lm(cv_dir)


def test_real_key_names_load_strictly(cv, cv_dir):
    state = torch.load(cv_dir / "llm.pt", weights_only=True)
    for key in ("llm_embedding.weight", "llm.model.model.layers.3.self_attn.q_proj.weight",
                "llm.model.model.embed_tokens.weight", "llm.model.model.norm.weight", "llm.model.lm_head.weight",
                "speech_embedding.weight", "llm_decoder.weight", "llm_decoder.bias"):
        assert key in state
    mine = cv.lm.state_dict()
    assert set(mine) == set(state)
    assert all(torch.equal(mine[k], state[k]) for k in state)
    assert cv.layout.speech_start == SPEECH and cv.layout.speech_end == END
    assert cv.layout.stop_ids == (END, END + 1, END + 2)  # upstream's stop_token_ids: 6561, 6562, 6563
    assert cv.vocab_size == QWEN_VOCAB + 2 + 6564


def test_detection(cv_dir, tmp_path):
    from test_family_llasa import build_llasa
    from test_family_orpheus import build_orpheus

    from spade_tts.families.cosyvoice2 import CosyVoice2SpeechLM
    from spade_tts.families.registry import matching_families

    assert matching_families(cv_dir) == ["cosyvoice2"]
    assert not CosyVoice2SpeechLM.detect(build_orpheus(tmp_path / "o"))
    assert not CosyVoice2SpeechLM.detect(build_llasa(tmp_path / "l"))


def test_prompt_ids_and_unified_forward(cv, cv_dir):
    w = cv.tokenizer.convert_tokens_to_ids
    ids = cv.prompt_ids("hello there", "good night ", np.array([0, 6560]))
    assert ids == [QWEN_VOCAB, w("good"), w("night"), w("hello"), w("there"), QWEN_VOCAB + 1, SPEECH, SPEECH + 6560]
    # the unified forward equals upstream's inference computation on the same weights
    up = UpstreamQwen2LM(cv_dir / "CosyVoice-BlankEN")
    up.load_state_dict(torch.load(cv_dir / "llm.pt", weights_only=True))
    up.eval()
    with torch.no_grad():
        text = torch.tensor([[w("good"), w("night"), w("hello"), w("there")]])
        emb = torch.cat([up.llm_embedding.weight[0].reshape(1, 1, -1), up.llm.model.model.embed_tokens(text),
                         up.llm_embedding.weight[1].reshape(1, 1, -1),
                         up.speech_embedding(torch.tensor([[0, 6560]]))], dim=1)
        h = up.llm.model.model(inputs_embeds=emb).last_hidden_state
        want = up.llm_decoder(h)
        got = cv.lm(input_ids=torch.tensor([ids])).logits
    assert got.shape == (1, len(ids), cv.vocab_size)
    torch.testing.assert_close(got[..., SPEECH:], want, atol=1e-5, rtol=1e-5)
    assert (got[..., :SPEECH] == -1e4).all()


def test_codes_round_trip_and_generation(cv):
    from spade_tts.families.base import GenerationConfig, Utterance
    from spade_tts.families.generate import generate_ids

    codes = np.array([5, 0, 6560, 17])
    ids = cv.codes_to_ids(codes)
    assert ids == [SPEECH + 5, SPEECH, SPEECH + 6560, SPEECH + 17]
    assert np.array_equal(cv.ids_to_codes(ids + [END, SPEECH]), codes)
    with pytest.raises(ValueError):
        cv.codes_to_ids(np.array([6561]))
    seq, loss_from = cv.training_sequence(Utterance("hello", codes))
    assert seq[loss_from + 1:] == ids + [END]
    new = generate_ids(cv, [cv.prompt_ids("hello there")],
                       GenerationConfig(temperature=1.0, top_p=1.0, seed=0, max_new_tokens=8, min_new_tokens=8))[0]
    assert len(new) == 8 and all(SPEECH <= i < END for i in new)
    # the KV-cached generation equals recomputing the whole sequence each step
    greedy = generate_ids(cv, [cv.prompt_ids("hello there")], GenerationConfig(greedy=True, max_new_tokens=5))[0]
    seq = cv.prompt_ids("hello there")
    rows = cv.layout.head_rows()
    with torch.no_grad():
        for _ in range(len(greedy)):
            logits = cv.lm(input_ids=torch.tensor([seq])).logits[0, -1, rows]
            seq.append(int(rows[logits.argmax()]))
    assert seq[-len(greedy):] == greedy


def test_pruned_save_reload_keeps_depth_and_weights(cv, tmp_path):
    import json

    from spade_tts.families.cosyvoice2 import CosyVoice2SpeechLM
    from spade_tts.pruning.layers import prune_layers

    pruned = CosyVoice2SpeechLM.from_pretrained(cv.path)
    prune_layers(pruned.lm, [0, 3])
    pruned.save_pretrained(tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "CosyVoice-BlankEN" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["vocab_size"] == QWEN_VOCAB
    assert (tmp_path / "out" / "cosyvoice2.yaml").is_file() and (tmp_path / "out" / "flow.pt").is_file()
    assert (tmp_path / "out" / "CosyVoice-BlankEN" / "tokenizer.json").is_file()
    back = CosyVoice2SpeechLM.from_pretrained(tmp_path / "out")
    assert len(back.lm.llm.model.model.layers) == 2
    a, b = pruned.lm.state_dict(), back.lm.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    old = cv.lm.state_dict()
    key = "llm.model.model.layers.{}.mlp.up_proj.weight"
    assert torch.equal(b[key.format(1)], old[key.format(3)])


def test_codec_missing_is_one_clear_line(cv):
    skip_if_installed("cosyvoice")
    with pytest.raises(ImportError, match="cosyvoice"):
        cv.encode_audio(np.zeros(1600, dtype=np.float32), 16000)


def test_cosyvoice_chain(tmp_path):
    got = run_chain(tmp_path, build_cosyvoice, "cosyvoice2")
    assert len(got["codes_shape"]) == 1 and got["codes_shape"][0] >= 13
    assert all(0 <= c < 6561 for c in got["codes"])
