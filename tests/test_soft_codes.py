"""Soft decoding (``GenerationConfig.soft_codes``): the codec hears each speech token's mean code value over the
nucleus it was drawn from; the LM still reads the code it drew."""
import dataclasses

import numpy as np
import pytest
import torch

from spade_tts.families.generate import generate

from test_speculative import phone_requests, tiny_builtin, write_scores


@pytest.fixture(scope="module")
def soft_builtin(tmp_path_factory):
    """The builtin rule over a random Llama, with a codec that has 3-dimensional values for its 6 codes."""
    tts = tiny_builtin(tmp_path_factory.mktemp("soft_builtin"))
    table = torch.randn(tts.vocab.num_speech, 3, generator=torch.Generator().manual_seed(0))
    tts.codec.code_values = lambda: table
    write_scores(tts.path, tts.lm, [0.9, 0.3, 0.5, 0.8])
    return tts


def expected_code_values(speech_logits: torch.Tensor, cfg, values: torch.Tensor) -> torch.Tensor:
    """The reference, written out with a full sort: per row, the mean of ``values`` over the top-p nucleus at the
    run's temperature, weighted by the renormalized probabilities."""
    sorted_p, order = torch.softmax(speech_logits.float() / cfg.temperature, dim=-1).sort(dim=-1, descending=True)
    kept = sorted_p * (sorted_p.cumsum(dim=-1) - sorted_p < cfg.top_p)
    return torch.einsum("rk,rkd->rd", kept / kept.sum(dim=-1, keepdim=True), values[order])


def _speech_positions(tts, ids: list[int]) -> list[int]:
    return [j for j, t in enumerate(ids) if tts.layout.speech_start <= t < tts.layout.speech_end]


@pytest.mark.filterwarnings("ignore:.*hit a length limit")
def test_soft_codes_leave_the_drawn_tokens_alone_and_keep_each_codes_nucleus_mean(soft_builtin):
    """Same seed, same tokens with and without soft decoding; one value row per speech code, each the mean over
    the nucleus (the run's temperature and top-p) of the logits that code was drawn from."""
    tts = soft_builtin
    requests = phone_requests(tts, 3, seed=1)
    # timing by the next phone alone: on random weights the 43 phone/end logits together always win
    cfg = tts.generation_defaults(temperature=0.8, top_p=0.9, max_seconds=0.3, seed=4, any_move_on=False)
    hard, _ = generate(tts, requests, cfg)
    soft, _ = generate(tts, requests, dataclasses.replace(cfg, soft_codes=True))
    assert [g.ids for g in soft] == [g.ids for g in hard] and all(g.code_values is None for g in hard)
    lo, hi = tts.layout.speech_start, tts.layout.speech_end
    mixed = 0
    for req, gen in zip(requests, soft):
        at = _speech_positions(tts, gen.ids)
        assert len(at) > 0 and gen.code_values.shape == (len(at), 3)
        with torch.no_grad():
            logits = tts.lm(torch.tensor([req.prompt + gen.ids])).logits[0, len(req.prompt) - 1:-1]
        want = expected_code_values(logits[at][:, lo:hi], cfg, tts.codec.code_values())
        np.testing.assert_allclose(gen.code_values, want.numpy(), atol=1e-4)
        drawn = tts.codec.code_values()[torch.tensor([gen.ids[j] - lo for j in at])].numpy()
        mixed += int((np.abs(gen.code_values - drawn).max(axis=1) > 1e-3).sum())
    assert mixed > 0  # the mean is not the drawn code's value where the nucleus holds several codes


@pytest.mark.parametrize("settings", [dict(greedy=True), dict(temperature=0.8, top_p=1e-9)])
def test_a_one_code_nucleus_is_exactly_the_drawn_codes_value(soft_builtin, settings):
    tts = soft_builtin
    cfg = tts.generation_defaults(soft_codes=True, max_seconds=0.3, any_move_on=False, **settings)
    gens, _ = generate(tts, phone_requests(tts, 2, seed=2), cfg)
    assert sum(len(g.code_values) for g in gens) > 0
    for gen in gens:
        codes = torch.tensor([gen.ids[j] - tts.layout.speech_start for j in _speech_positions(tts, gen.ids)])
        assert torch.equal(torch.from_numpy(gen.code_values), tts.codec.code_values()[codes])


@pytest.mark.filterwarnings("ignore:.*hit a length limit")
@pytest.mark.parametrize("k", [2, 4])
def test_speculative_decoding_keeps_the_models_nucleus_means_not_the_drafts(soft_builtin, k):
    """Rejected drafts leave no value behind (restore cuts them with the tokens), and every code's value is the
    mean over the model's nucleus at that step, not the draft's."""
    tts = soft_builtin
    cfg = tts.generation_defaults(temperature=0.8, top_p=0.9, soft_codes=True, max_seconds=0.3, any_move_on=False,
                                  seed=3, draft="skip=2", draft_tokens=k)
    requests = phone_requests(tts, 3, seed=5)
    drafted, stats = generate(tts, requests, cfg)
    assert 0 < stats.extra["accepted"] < stats.extra["proposed"]  # acceptances and rejections happened
    lo, hi = tts.layout.speech_start, tts.layout.speech_end
    for req, gen in zip(requests, drafted):
        at = _speech_positions(tts, gen.ids)
        with torch.no_grad():
            logits = tts.lm(torch.tensor([req.prompt + gen.ids])).logits[0, len(req.prompt) - 1:-1]
        np.testing.assert_allclose(gen.code_values, expected_code_values(logits[at][:, lo:hi], cfg,
                                                                         tts.codec.code_values()).numpy(), atol=1e-4)


# ---------------------------------------------------------------- the shipped model's codec and audio


def test_soft_decoding_with_the_shipped_model_changes_the_audio_not_its_length_and_a_one_code_nucleus_does_not():
    from spade_tts.audio import to_mono_16k
    from spade_tts.data.voices import synthesize as voice
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.synthesis import PROMPT_SENTENCE, synthesize

    tts = load_speech_lm()
    u = voice([PROMPT_SENTENCE], "flite_slt")[0]
    prompt = to_mono_16k(u.audio, u.sample_rate)

    def speak(**settings):
        cfg = tts.generation_defaults(max_seconds=3.0, **settings)
        return synthesize(tts, ["Glue the sheet to the dark blue background."], [prompt], [PROMPT_SENTENCE], cfg)[0]

    drawn, soft = speak(soft_codes=False), speak(soft_codes=True)
    assert np.array_equal(drawn.codes, soft.codes) and len(drawn.audio) == len(soft.audio)
    assert not np.allclose(drawn.audio, soft.audio, atol=1e-3)
    assert np.array_equal(speak(soft_codes=True, greedy=True).audio, speak(soft_codes=False, greedy=True).audio)
