"""Shared fixtures: a tiny real corpus (two flite voices), its codec and token files.

Everything is made by the project's own code from real synthesized speech, once per test
session, in a temporary folder: nothing is downloaded and nothing is committed.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: threads buy nothing, and OpenMP spinning on a busy 2-core machine
    makes small forwards up to 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    from spade_tts.data.build import DataConfig, build_corpus

    out = tmp_path_factory.mktemp("corpus")
    cfg = DataConfig(out_dir=str(out), voices=["flite_slt", "flite_rms"], train_per_voice=10, heldout=4,
                     chunk_size=7, workers=1)
    summary = build_corpus(cfg)
    return out, cfg, summary


@pytest.fixture(scope="session")
def tiny_codec(tiny_corpus, tmp_path_factory):
    from spade_tts.codec.train import CodecFitConfig, fit_codec

    corpus, _, _ = tiny_corpus
    out = tmp_path_factory.mktemp("codec")
    fit_codec(CodecFitConfig(corpus_dir=str(corpus), out_dir=str(out), codebook_size=32, utterances=20, iters=5))
    return out


@pytest.fixture(scope="session")
def tiny_tokens(tiny_corpus, tiny_codec, tmp_path_factory):
    from spade_tts.reference.dataset import prepare_tokens

    corpus, _, _ = tiny_corpus
    out = tmp_path_factory.mktemp("tokens")
    prepare_tokens(corpus, tiny_codec, out)
    return out


@pytest.fixture(scope="session")
def tiny_reference(tiny_corpus, tiny_codec, tiny_tokens, tmp_path_factory):
    """A 4-layer reference LM trained for a few steps on the tiny corpus: real layout, real codec, HF folder."""
    from spade_tts.reference.train import ReferenceTrainConfig, train_reference

    corpus, _, _ = tiny_corpus
    out = tmp_path_factory.mktemp("tiny_reference")
    cfg = ReferenceTrainConfig(corpus_dir=str(corpus), codec_dir=str(tiny_codec), tokens_dir=str(tiny_tokens),
                               out_dir=str(out), steps=8, save_every=8, layers=4, hidden=32, heads=2, kv_heads=2,
                               intermediate=64, batch_size=4, warmup=2, log_every=4, max_prompt_seconds=30.0,
                               max_target_seconds=30.0, loader_workers=1,
                               prompt_loss=True)  # the tiny model the importance tests were written against
    return train_reference(cfg)
