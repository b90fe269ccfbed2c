"""StaticDecoder against Hugging Face on tiny random models of the real config classes."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from spade_tts.decoding import StaticDecoder, generate_greedy
from spade_tts.hf_compat import cache_kwargs, output_cache

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=None, eos_token_id=None)
ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(num_hidden_layers=4, num_key_value_heads=4)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),  # q/k/v biases
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16, tie_word_embeddings=False)),  # q_norm/k_norm
    "mistral": (MistralConfig, MistralForCausalLM, dict(sliding_window=None)),
}


def make_model(arch: str, seed: int = 0, **overrides) -> nn.Module:
    cfg_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**COMMON, **extra, **overrides})).eval()
    with torch.no_grad():  # the default init is tiny; larger weights make the test sensitive to mistakes
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
            else:
                p.normal_(0, 0.15)
    return model


def padded_batch(lengths, width=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, width - n:] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[b, width - n:] = 1
    return ids, mask


@torch.no_grad()
def hf_logits(model, ids, mask, feed):
    """HF forward + DynamicCache, as synth.py decodes: logits after the prompt and after each fed token."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, logits = output_cache(out), [out.logits[:, -1]]
    for tok in feed:
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                    use_cache=True, **cache_kwargs(model, past))
        past = output_cache(out)
        logits.append(out.logits[:, -1])
    return logits


def static_logits(decoder, ids, mask, feed):
    logits = [decoder.prefill(ids, mask)]
    logits += [decoder.step(tok) for tok in feed]
    return logits


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_matches_hf_generate(arch):
    model = make_model(arch)
    with torch.no_grad():
        for lengths in ([7], [9, 5, 2]):
            ids, mask = padded_batch(lengths)
            ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
            ref = ref[:, ids.shape[1]:]
            assert torch.equal(generate_greedy(model, ids, mask, 12), ref), (arch, lengths)
            static = StaticDecoder(model, 4, 32, static_shapes=True)  # the CUDA-graph shape, run eagerly
            assert torch.equal(generate_greedy(model, ids, mask, 12, decoder=static), ref), (arch, lengths)
            fused = StaticDecoder(model, 4, 32, fuse_projections=True)
            assert torch.equal(generate_greedy(model, ids, mask, 12, decoder=fused), ref), (arch, lengths)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("static_shapes", [False, True])
@pytest.mark.parametrize("fuse", [False, True])
def test_logits_match_hf_forward(arch, static_shapes, fuse):
    model = make_model(arch)
    ids, mask = padded_batch([8, 3, 6])
    feed = [torch.randint(1, VOCAB, (3,), generator=torch.Generator().manual_seed(s)) for s in range(6)]
    ref = hf_logits(model, ids, mask, feed)
    got = static_logits(StaticDecoder(model, 3, 14, static_shapes=static_shapes, fuse_projections=fuse), ids, mask, feed)
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_grouped_query_attention_and_no_padding():
    model = make_model("qwen2", num_attention_heads=8, num_key_value_heads=2)
    ids, mask = padded_batch([6, 6])
    feed = [torch.tensor([5, 9]), torch.tensor([17, 3])]
    for r, g in zip(hf_logits(model, ids, mask, feed), static_logits(StaticDecoder(model, 2, 8), ids, None, feed)):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_sliding_window_matches_hf():
    model = make_model("mistral", sliding_window=4)
    ids, mask = padded_batch([7, 4])
    feed = [torch.tensor([t, t + 1]) for t in range(3, 9)]
    ref = hf_logits(model, ids, mask, feed)
    no_window = hf_logits(make_model("mistral", sliding_window=None), ids, mask, feed)
    assert (ref[-1] - no_window[-1]).abs().max() > 1e-3  # the window matters here
    for static_shapes in (False, True):
        got = static_logits(StaticDecoder(model, 2, 16, static_shapes=static_shapes), ids, mask, feed)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rows", [
    slice(40, VOCAB),
    list(range(0, 4)) + list(range(40, VOCAB)),  # control tokens + speech tokens: two runs, views
    list(range(3, VOCAB, 3)),  # many runs: a gathered copy of the rows
], ids=["slice", "two-runs", "scattered"])
def test_head_trimming_is_exact(rows):
    model = make_model("qwen3")
    ids, mask = padded_batch([6, 4, 5])
    full = StaticDecoder(model, 3, 24)
    trimmed = StaticDecoder(model, 3, 24, head_rows=rows)
    vocab_ids = torch.arange(VOCAB)[rows] if isinstance(rows, slice) else torch.tensor(rows)
    assert torch.equal(trimmed.vocab_ids, vocab_ids)
    assert trimmed.num_columns == len(vocab_ids)
    lf, lt = full.prefill(ids, mask), trimmed.prefill(ids, mask)
    for _ in range(10):
        torch.testing.assert_close(lt, lf[:, vocab_ids], atol=1e-5, rtol=1e-5)
        restricted = torch.full_like(lf, float("-inf"))
        restricted[:, vocab_ids] = lf[:, vocab_ids]
        nxt = trimmed.token_ids(lt.argmax(-1))
        assert torch.equal(nxt, restricted.argmax(-1))  # greedy over the rows == restricted greedy
        assert torch.equal(trimmed.columns(nxt), lt.argmax(-1))
        torch.testing.assert_close(trimmed.full_logits(lt), restricted, atol=1e-5, rtol=1e-5)
        lf, lt = full.step(nxt), trimmed.step(nxt)
    out = generate_greedy(model, ids, mask, 8, head_rows=rows)
    assert bool(torch.isin(out, vocab_ids).all())


def test_swapped_layer_subset_decodes_like_hf():
    model = make_model("llama")
    ids, mask = padded_batch([6, 3])
    feed = [torch.tensor([t, 2 * t]) for t in range(1, 6)]
    full_ref = hf_logits(model, ids, mask, feed)
    keep = [0, 2]
    model.model.layers = nn.ModuleList([model.model.layers[i] for i in keep])  # as layer skipping does
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx
    model.config.num_hidden_layers = len(keep)
    ref = hf_logits(model, ids, mask, feed)
    assert (ref[0] - full_ref[0]).abs().max() > 1e-2  # the subset really is another model
    decoder = StaticDecoder(model, 2, 12)
    assert decoder.num_layers == 2
    for r, g in zip(ref, static_logits(decoder, ids, mask, feed)):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(generate_greedy(model, ids, mask, 6), gen)


def test_eos_stops_like_hf():
    model = make_model("llama")
    ids, mask = padded_batch([5, 3])
    free = generate_greedy(model, ids, mask, 10)
    eos = int(free[0, 2])  # a token row 0 emits early
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                             eos_token_id=eos, pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(generate_greedy(model, ids, mask, 10, eos_token_id=eos, pad_token_id=0), ref)


def test_weights_are_shared_not_copied():
    model = make_model("llama")
    decoder = StaticDecoder(model, 1, 8, head_rows=slice(10, 60))
    attn = model.model.layers[0].self_attn
    layer0 = decoder._layers[0]
    assert layer0[1].data_ptr() == attn.q_proj.weight.data_ptr() and layer0[1].shape == (64, 64)
    assert decoder._head[0][0].data_ptr() == model.lm_head.weight[10].data_ptr()


def test_errors_are_one_line_value_errors():
    model = make_model("llama")
    decoder = StaticDecoder(model, max_batch=2, max_len=6)
    ids, mask = padded_batch([3, 3, 3])
    cases = [
        lambda: decoder.prefill(ids, mask),  # batch 3 > max_batch 2
        lambda: decoder.prefill(*padded_batch([7])),  # prompt 7 > max_len 6
        lambda: decoder.prefill(torch.tensor([[5, 6, 0]]), torch.tensor([[1, 1, 0]])),  # right padding
        lambda: StaticDecoder(model, 1, 8, dtype=torch.bfloat16),
        lambda: StaticDecoder(model, 1, 8, head_rows=[3, VOCAB]),
    ]
    for case in cases:
        with pytest.raises(ValueError) as err:
            case()
        assert "\n" not in str(err.value) and str(err.value)
    decoder.prefill(*padded_batch([4]))
    decoder.step(torch.tensor([1]))
    decoder.step(torch.tensor([2]))  # 6 slots filled
    with pytest.raises(ValueError, match="max_len=6") as err:
        decoder.step(torch.tensor([3]))
    assert "\n" not in str(err.value)
    two = StaticDecoder(model, 2, 8)
    two.prefill(*padded_batch([2, 2]))
    with pytest.raises(ValueError, match="shape"):
        two.step(torch.tensor([1]))
    with pytest.raises(RuntimeError, match="prefill"):
        StaticDecoder(model, 1, 8).step(torch.tensor([1]))


def test_bfloat16_close_to_hf():
    model = make_model("qwen2").to(torch.bfloat16)
    ids, mask = padded_batch([6, 4])
    feed = [torch.tensor([7, 8]), torch.tensor([9, 10])]
    for r, g in zip(hf_logits(model, ids, mask, feed), static_logits(StaticDecoder(model, 2, 8), ids, mask, feed)):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), r.float(), atol=0.1, rtol=0.05)


def test_static_step_traces_as_one_graph():
    """The compiled path's step traces with fullgraph=True (dynamo only, no inductor: CPU-cheap)."""
    model = make_model("qwen3", num_hidden_layers=2)
    ids, mask = padded_batch([5, 3])
    ref = generate_greedy(model, ids, mask, 5)
    decoder = StaticDecoder(model, 2, 12, compile=True, compile_kwargs={"backend": "eager", "fullgraph": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a failed compile would warn and fall back
        got = generate_greedy(model, ids, mask, 5, decoder=decoder)
    assert decoder._compiled is not None
    assert torch.equal(got, ref)


def test_dropping_finished_rows_keeps_the_others_exact():
    """keep_rows: the remaining rows decode exactly as they would have in the full batch."""
    model = make_model("qwen2")
    ids, mask = padded_batch([5, 9, 7, 3])
    feed = [torch.randint(1, VOCAB, (4,), generator=torch.Generator().manual_seed(s)) for s in range(6)]
    ref = StaticDecoder(model, max_batch=4, max_len=32)
    ref.prefill(ids, mask)
    full = [ref.step(tok) for tok in feed]
    dec = StaticDecoder(model, max_batch=4, max_len=32)
    dec.prefill(ids, mask)
    for tok in feed[:3]:
        dec.step(tok)
    dec.keep_rows([3, 0])  # rows 1 and 2 finished; the order may change too
    for t, tok in enumerate(feed[3:], start=3):
        torch.testing.assert_close(dec.step(tok[[3, 0]]), full[t][[3, 0]], rtol=1e-5, atol=1e-5)
    dec.keep_rows([1])  # now only the original row 0 is left; one more step against it decoded alone
    torch.testing.assert_close(dec.step(feed[0][[0]]), dec_step_reference(model, ids, mask, feed, [0], feed[0][[0]]),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="distinct row numbers"):
        dec.keep_rows([0, 0])
    with pytest.raises(ValueError, match="static_shapes=False"):
        StaticDecoder(model, max_batch=4, max_len=32, static_shapes=True).keep_rows([0])


def dec_step_reference(model, ids, mask, feed, rows, last):
    """Logits of ``rows`` decoded alone (a fresh batch of just them) after ``feed`` and then ``last``."""
    dec = StaticDecoder(model, max_batch=len(rows), max_len=32)
    dec.prefill(ids[rows], mask[rows])
    for tok in feed:
        dec.step(tok[rows])
    return dec.step(last)


def test_int8_weight_is_the_nearest_grid_product():
    """Int8Weight: each weight within half a quantization step; mm = bf16 activations times that grid."""
    from spade_tts.decoding.int8_weights import Int8Weight

    torch.manual_seed(0)
    w = torch.randn(48, 40) * torch.linspace(0.01, 2.0, 40)  # (in, out), output channels of very different scale
    q = Int8Weight(w)
    step = q.scale.float()
    deq = q.dequantized()
    assert deq.shape == w.shape
    assert bool(((deq - w).abs() <= step[None, :] * 0.5 + 1e-7).all())
    assert bool((q.q.abs().amax(dim=1) >= 126).all())  # the grid spans each channel's range
    x, b = torch.randn(3, 48), torch.randn(40)
    got = q.mm(x, b)
    assert got.dtype == torch.float32
    want = x.bfloat16().float() @ deq + b
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().mean()))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("fuse", [False, True])
def test_int8_weights_track_the_float_decoder(arch, fuse):
    """int8_weights: logits within a few % of the float decoder's (lossy by design), heads trimmed alike."""
    model = make_model(arch)
    ids, mask = padded_batch([8, 3, 6])
    feed = [torch.randint(1, VOCAB, (3,), generator=torch.Generator().manual_seed(s)) for s in range(6)]
    ref = static_logits(StaticDecoder(model, 3, 14, head_rows=slice(10, 100)), ids, mask, feed)
    dec = StaticDecoder(model, 3, 14, head_rows=slice(10, 100), int8_weights=True, fuse_projections=fuse)
    got = static_logits(dec, ids, mask, feed)
    for r, g in zip(ref, got):
        assert g.shape == r.shape and g.dtype == torch.float32
        rel = float((g - r).norm() / r.norm())
        assert 0 < rel < 0.03, rel  # really quantized, and close
    # the model's own weights are untouched and still drive a float decoder exactly
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    torch.testing.assert_close(static_logits(StaticDecoder(model, 3, 14, head_rows=slice(10, 100)), ids, mask, feed)[-1],
                               ref[-1])


def test_int8_weights_refuse_gpu_paths():
    model = make_model("llama").to("meta")  # any non-CPU device
    with pytest.raises(ValueError, match="CPU path") as err:
        StaticDecoder(model, 1, 8, int8_weights=True)
    assert "\n" not in str(err.value)


def test_int8_step_traces_as_one_graph():
    """The compiled int8 path (the fastest CPU decoder) traces with fullgraph=True and decodes as the eager one."""
    model = make_model("llama", num_hidden_layers=2)
    ids, mask = padded_batch([5, 3])
    ref = generate_greedy(model, ids, mask, 6, decoder=StaticDecoder(model, 2, 12, int8_weights=True,
                                                                       static_shapes=True))
    decoder = StaticDecoder(model, 2, 12, int8_weights=True, compile=True,
                            compile_kwargs={"backend": "eager", "fullgraph": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        got = generate_greedy(model, ids, mask, 6, decoder=decoder)
    assert decoder._compiled is not None
    assert torch.equal(got, ref)


def test_step_compiled_for_any_length_matches_eager_and_is_reused():
    """compile_any_length (inductor, dynamic shapes): logits equal the eager step's to rounding, and a second
    decoder of the same model shape, with another cache length and other prompts, runs without compiling again."""
    from torch._dynamo.utils import counters

    model = make_model("qwen2", num_hidden_layers=2)  # q/k/v biases: every term of the step
    for int8 in (False, True):
        graphs = None
        for max_len, lengths, seed in ((20, [5, 3], 1), (41, [9, 4], 2)):
            ids, mask = padded_batch(lengths, seed=seed)
            feed = [torch.randint(1, VOCAB, (2,), generator=torch.Generator().manual_seed(s)) for s in range(7)]
            ref = static_logits(StaticDecoder(model, 2, max_len, int8_weights=int8), ids, mask, feed)
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # a failed compile would warn and fall back
                got = static_logits(StaticDecoder(model, 2, max_len, int8_weights=int8, compile_any_length=True),
                                    ids, mask, feed)
            for r, g in zip(ref, got):
                torch.testing.assert_close(g, r, atol=2e-2 if int8 else 1e-4, rtol=2e-2 if int8 else 1e-4)
            if graphs is not None:
                assert counters["stats"]["unique_graphs"] == graphs, "the second decoder compiled again"
            graphs = counters["stats"]["unique_graphs"]
    with pytest.raises(ValueError, match="compile_any_length") as err:
        StaticDecoder(model, 1, 8, compile=True, compile_any_length=True)
    assert "\n" not in str(err.value)


def test_a_failed_any_length_compile_warns_once_and_decodes_eagerly(monkeypatch):
    """A compile that fails falls back to the eager step with one warning; later decoders go eager at once."""
    from spade_tts.decoding import static_decoder

    calls = []

    class Broken:
        failed = False

        def fn(self, *args):
            calls.append(1)
            raise RuntimeError("inductor could not build\nsecond line")

    broken = Broken()
    monkeypatch.setattr(static_decoder, "_any_length_step", lambda: broken)
    model = make_model("llama", num_hidden_layers=2)
    ids, mask = padded_batch([5, 3])
    feed = [torch.tensor([7, 8]), torch.tensor([9, 10])]
    ref = static_logits(StaticDecoder(model, 2, 12), ids, mask, feed)
    with pytest.warns(UserWarning, match="inductor could not build\\); decoding uncompiled"):
        got = static_logits(StaticDecoder(model, 2, 12, compile_any_length=True), ids, mask, feed)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        static_logits(StaticDecoder(model, 2, 12, compile_any_length=True), ids, mask, feed)
    assert broken.failed and len(calls) == 1
