"""Shared fixtures: a tiny real corpus (two flite voices), its codec and token files.

Everything is made by the project's own code from real synthesized speech, once per test
session, in a temporary folder: nothing is downloaded and nothing is committed.
"""
from __future__ import annotations

import pytest


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
