import numpy as np
import pytest
import torch

from spade_tts.audio import load_audio
from spade_tts.codec.tokenizer import CodecConfig, SpeechTokenizer, kmeans
from spade_tts.data.build import read_jsonl


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centres])
    found = kmeans(x, 3, iters=10)
    dist = torch.cdist(centres, found).min(dim=1).values
    assert dist.max() < 0.2


def test_kmeans_needs_enough_frames():
    with pytest.raises(ValueError, match="at least 8 frames"):
        kmeans(torch.zeros(4, 2), 8)


def test_roundtrip_on_real_speech(tiny_corpus, tiny_codec):
    corpus, _, _ = tiny_corpus
    tok = SpeechTokenizer.load(tiny_codec)
    row = read_jsonl(corpus / "manifests" / "heldout.jsonl")[0]
    audio = load_audio(corpus / row["audio"])
    codes = tok.encode(audio)
    assert codes.dtype == np.int64 and codes.min() >= 0 and codes.max() < 32
    assert abs(len(codes) - row["seconds"] * tok.config.tokens_per_second) <= 2
    recon = tok.decode(codes)
    assert abs(len(recon) - len(audio)) <= tok.config.hop * 2
    # The decoded mel is closer to the original's than a shuffled token sequence is.
    target = tok.mel.log_mel(audio)[: len(codes)]
    good = np.abs(tok.decode_mel(codes) - target).mean()
    bad = np.abs(tok.decode_mel(np.random.default_rng(0).permutation(codes)) - target).mean()
    assert good < 0.8 * bad


def test_stacked_tokens_halve_the_rate(tiny_corpus):
    corpus, _, _ = tiny_corpus
    rows = read_jsonl(corpus / "manifests" / "train.jsonl")[:6]
    audios = [load_audio(corpus / r["audio"]) for r in rows]
    one = SpeechTokenizer.fit(CodecConfig(codebook_size=16, stack=1), audios, iters=2)
    two = SpeechTokenizer.fit(CodecConfig(codebook_size=16, stack=2), audios, iters=2)
    assert two.config.tokens_per_second == one.config.tokens_per_second / 2
    assert abs(len(two.encode(audios[0])) - len(one.encode(audios[0])) // 2) <= 1
    assert two.decode_mel(two.encode(audios[0])).shape[1] == 80


def test_decode_rejects_out_of_range_tokens(tiny_codec):
    tok = SpeechTokenizer.load(tiny_codec)
    with pytest.raises(ValueError, match="speech tokens must lie"):
        tok.decode([0, 5, 32])
    assert tok.decode([]).size == 0


def test_load_missing_codec_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="spade codec fit"):
        SpeechTokenizer.load(tmp_path)


@pytest.mark.parametrize("kind", ["kmeans", "fsq"])
def test_code_values_decode_as_their_codes_and_a_wrong_shape_is_refused(tiny_codec, kind):
    """What soft decoding builds on: a row of ``code_values()`` is its code, to the bit, for both kinds; the k-means
    decoder is linear, so the mean of two codes' values is the mean of their log-mels."""
    from spade_tts.codec.fsq import FSQConfig, FSQTokenizer, MelFSQ

    if kind == "kmeans":
        tok = SpeechTokenizer.load(tiny_codec)
    else:
        cfg = FSQConfig(levels=[5, 4, 3], channels=16, blocks=2)
        torch.manual_seed(0)
        tok = FSQTokenizer(cfg, MelFSQ(cfg), torch.zeros(cfg.n_mels), torch.ones(cfg.n_mels))
    codes = np.random.default_rng(0).integers(0, tok.vocab_size, 40)
    values = tok.code_values()[torch.from_numpy(codes)]
    assert np.array_equal(tok.decode_values(values.numpy()), tok.decode(codes))
    if kind == "kmeans":
        a, b = tok.code_values()[torch.from_numpy(codes[:20])], tok.code_values()[torch.from_numpy(codes[20:])]
        np.testing.assert_allclose(tok.values_to_mel((a + b) / 2),
                                   (tok.decode_mel(codes[:20]) + tok.decode_mel(codes[20:])) / 2, atol=1e-5)
    with pytest.raises(ValueError, match=r"code values must be \(tokens, "):
        tok.decode_values(np.zeros((4, values.shape[1] + 1), dtype=np.float32))
    assert tok.decode_values(np.zeros((0, values.shape[1]), dtype=np.float32)).size == 0
