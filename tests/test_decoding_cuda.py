"""The CUDA-graph decode path against Hugging Face, on a GPU.

CUDA graphs cannot be recorded without a CUDA device, so on CPU-only machines (CI) these tests
skip; `scripts/device_check.sh` runs them on a lent GPU machine. The CPU suite checks the same
decoder's static-shape step eagerly (tests/test_static_decoder.py).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from spade_tts.decoding import StaticDecoder, generate_greedy
from test_static_decoder import ARCHS, hf_logits, make_model, padded_batch, static_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (CUDA graphs); run on a GPU machine")


def on_gpu(arch, **overrides):
    return make_model(arch, **overrides).cuda()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_graph_replay_gives_hf_generate_tokens(arch):
    model = on_gpu(arch)
    decoder = StaticDecoder(model, 4, 32, cuda_graphs=True)  # one decoder, graphs for batch 1 and 3
    with torch.no_grad():
        for lengths in ([7], [9, 5, 2], [4]):
            ids, mask = (t.cuda() for t in padded_batch(lengths))
            ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)[:, ids.shape[1]:]
            assert torch.equal(generate_greedy(model, ids, mask, 12, decoder=decoder), ref), (arch, lengths)
    assert sorted(decoder._graphs) == [1, 3]


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_graph_replay_logits_match_hf_forward(arch, fuse):
    model = on_gpu(arch)
    ids, mask = (t.cuda() for t in padded_batch([8, 3, 6]))
    feed = [torch.randint(1, 128, (3,), generator=torch.Generator().manual_seed(s)).cuda() for s in range(6)]
    ref = hf_logits(model, ids, mask, feed)
    got = static_logits(StaticDecoder(model, 3, 14, cuda_graphs=True, fuse_projections=fuse), ids, mask, feed)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_compiled_step_inside_the_graph_gives_the_same_tokens():
    model = on_gpu("qwen2")
    ids, mask = (t.cuda() for t in padded_batch([9, 5]))
    ref = generate_greedy(model, ids, mask, 10)
    decoder = StaticDecoder(model, 2, 24, compile=True, cuda_graphs=True)
    with warnings.catch_warnings(record=True) as caught:  # a failed compile warns and falls back to eager
        warnings.simplefilter("always")
        got = generate_greedy(model, ids, mask, 10, decoder=decoder)
    assert not [w for w in caught if "decode step failed" in str(w.message)]
    assert decoder._compiled is not None
    assert torch.equal(got, ref)
    feed = [torch.tensor([5, 6]).cuda(), torch.tensor([7, 8]).cuda()]
    for r, g in zip(static_logits(StaticDecoder(model, 2, 24), ids, mask, feed), static_logits(decoder, ids, mask, feed)):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_compiled_step_in_bfloat16_stays_close_to_eager():
    """Inductor fuses the norms and rotary maths in float32, so bf16 logits differ by rounding only."""
    model = on_gpu("llama").to(torch.bfloat16)
    ids, mask = (t.cuda() for t in padded_batch([9, 5]))
    feed = [torch.tensor([5, 6]).cuda(), torch.tensor([7, 8]).cuda(), torch.tensor([9, 10]).cuda()]
    eager = static_logits(StaticDecoder(model, 2, 24, cuda_graphs=True), ids, mask, feed)
    fused = static_logits(StaticDecoder(model, 2, 24, compile=True, cuda_graphs=True), ids, mask, feed)
    for e, f in zip(eager, fused):
        torch.testing.assert_close(f.float(), e.float(), atol=0.1, rtol=0.05)


def test_trimmed_head_in_bfloat16_on_the_gpu():
    model = on_gpu("llama").to(torch.bfloat16)
    ids, mask = (t.cuda() for t in padded_batch([6, 4]))
    rows = list(range(0, 8)) + list(range(40, 128))
    full = StaticDecoder(model, 2, 20)
    trimmed = StaticDecoder(model, 2, 20, head_rows=rows, cuda_graphs=True)
    feed = [torch.tensor([50, 60]).cuda(), torch.tensor([70, 80]).cuda()]
    for f, t in zip(static_logits(full, ids, mask, feed), static_logits(trimmed, ids, mask, feed)):
        torch.testing.assert_close(t.float(), f[:, rows].float(), atol=0.05, rtol=0.02)


def test_reference_synthesis_on_the_gpu_speaks_like_hf_forward():
    from builtin_helpers import phone_forced

    from spade_tts.families.builtin import BuiltinSpeechLM

    tts = BuiltinSpeechLM.from_pretrained(device="cuda")
    v = tts.vocab
    targets = [v.phone_ids(["pau", "hh", "ah", "l", "ow", "pau"]), v.phone_ids(["pau", "k", "ae", "t", "pau"])]
    prompts = [v.prompt_ids(v.phone_ids(["pau", "ah", "pau"]), targets[0], [100, 200, 300]),
               v.prompt_ids(v.phone_ids(["pau", "iy", "pau"]), targets[1], [400, 500, 600, 700, 800, 900])]
    for temperature in (0.0, 1.0):
        kw = dict(temperature=temperature, top_p=0.9, seed=5, max_phone_seconds=0.1, max_seconds=2.0)
        fast = phone_forced(tts, prompts, targets, decoder="static", **kw)
        ref = phone_forced(tts, prompts, targets, decoder="hf", **kw)
        assert fast == ref and all(len(codes) > 0 for codes, _, _ in fast), temperature
