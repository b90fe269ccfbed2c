"""OuteTTS 1.0 adapter against upstream's own v1.0 format (edwko/OuteTTS at f5eac6e, ``outetts/version/v3``: the
interface version of Llama-OuteTTS-1.0-1B and OuteTTS-1.0-0.6B), independently of the adapter's tests.

Upstream's v1.0 prompt (``PromptProcessor``): ``<|im_start|>\\n<|text_start|>TEXT<|text_end|>\\n<|audio_start|>\\n``
with TEXT the normalized plain text (the speaker's text, then ``". "`` unless it ends in ``.?!``, then the target
text; no ``<|space|>`` tokens, those belong to 0.2/0.3). The speech is written word by word:
``<|word_start|>WORD<|features|><|t_D|><|energy_E|><|spectral_centroid_C|><|pitch_P|><|code|>`` + ``<|c1_a|><|c2_b|>``
per DAC frame + ``<|word_end|>``, words joined by ``\\n``; a voice prompt's words come first (its last word carries
the separator) and the prompt ends with ``\\n<|word_start|>``; the model then writes the next words itself (word
text and feature tokens included). Training samples add ``<|global_features_start|>...<|global_features_end|>\\n``
after ``<|audio_start|>\\n`` and end with ``\\n<|audio_end|>\\n<|im_end|>\\n``. Upstream's audio processor cuts a
word's codes from the previous word's end to ``int(end * 75)`` (the first word from ``int(start * 75) - 20``, the
last to ``int(end * 75) + 20``), and its duration token is the frame count / 75. The codec is IBM's
DAC.speech.v1.0 (24 kHz, 1.5 kbps, 2 codebooks), not descript's general 24 kHz DAC.

The oracles below write upstream's *strings* (as its prompt processor formats them) and tokenize them whole, as
upstream's interface does (``tokenizer.encode(prompt, add_special_tokens=False)``).
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from family_chain import LLAMA3_SPECIALS, LLAMA3_TEXT_VOCAB, WORDS, save_tiny_llama, word_level_tokenizer
from spade_tts.families import codec_hooks

VOCAB = 134400
# upstream outetts/version/v3/tokens.py SpecialTokens (the markers)
V1_MARKERS = ["<|im_start|>", "<|im_end|>", "<|text_start|>", "<|text_end|>", "<|voice_characteristic_start|>",
              "<|voice_characteristic_end|>", "<|emotion_start|>", "<|emotion_end|>", "<|audio_start|>",
              "<|audio_end|>", "<|code|>", "<|word_start|>", "<|word_end|>", "<|features|>",
              "<|global_features_start|>", "<|global_features_end|>"]
C1 = LLAMA3_TEXT_VOCAB + 100
C2 = C1 + 1024
NEWLINE = 198  # Llama-3's "\n" (a token of its own here, so that the newlines of the layout are checked)
# time tokens <|t_0.00|>..<|t_3.00|> and the feature tokens 0..100, from id 131000 (this test's choice)
VALUE_TOKENS = ([f"<|t_{k / 100:.2f}|>" for k in range(301)]
                + [f"<|{name}_{k}|>" for name in ("energy", "spectral_centroid", "pitch") for k in range(101)])
SPEAKER_WORDS = ["good", "night", "the", "quick"]


def oute_tokenizer(with_space: bool, per_codebook: int = 1024, values: bool = True):
    markers = V1_MARKERS + (["<|space|>"] if with_space else [])
    specials = {**LLAMA3_SPECIALS, **{m: LLAMA3_TEXT_VOCAB + i for i, m in enumerate(markers)}}
    if values:
        specials.update({t: 131000 + i for i, t in enumerate(VALUE_TOKENS)})
        specials["\n"] = NEWLINE
    named = {f"<|c1_{k}|>": C1 + k for k in range(per_codebook)}
    named.update({f"<|c2_{k}|>": C1 + per_codebook + k for k in range(per_codebook)})
    return word_level_tokenizer(VOCAB, specials, named, words=list(WORDS) + ["night.", "there.", "quick."],
                                split_pattern=r"<\|c[12]_\d+\|>", bos="<|begin_of_text|>", eos="<|im_end|>")


@pytest.fixture(scope="module")
def oute(tmp_path_factory):
    from spade_tts.families.registry import load_speech_lm

    path = save_tiny_llama(tmp_path_factory.mktemp("oute") / "Llama-OuteTTS-1.0-1B", VOCAB, oute_tokenizer(True),
                           bos_token_id=128000, eos_token_id=LLAMA3_TEXT_VOCAB + 1)
    return load_speech_lm(path)


def enc(oute, text):
    return oute.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_detected_with_speech_range(oute):
    assert oute.family == "outetts"
    assert (oute.layout.speech_start, oute.layout.speech_end) == (C1, C2 + 1024)
    assert enc(oute, "<|audio_end|>")[0] in oute.layout.stop_ids


def test_codes_read_back_as_upstream_extracts_them(oute):
    """extract_audio_from_tokens: every <|c1_*|> and every <|c2_*|> in order, cut to the shorter list; the words,
    markers and feature tokens the model writes between frames are skipped."""
    m = lambda s: enc(oute, s)  # noqa: E731
    generated = (m("<|word_start|>hello<|features|><|code|><|c1_3|><|c2_9|><|c1_1023|><|c2_0|><|word_end|>")
                 + m("<|word_start|>there<|features|><|code|><|c1_5|><|c2_6|><|c1_7|><|word_end|><|audio_end|>")
                 + m("<|c1_1|><|c2_1|>"))
    assert oute.ids_to_codes(generated).tolist() == [[3, 1023, 5], [9, 0, 6]]


def test_completion_prompt_without_speaker(oute):
    assert oute.prompt_ids("hello there") == enc(
        oute, "<|im_start|>\n<|text_start|>hello there<|text_end|>\n<|audio_start|>\n")


# -- upstream's strings, written from outetts/version/v3 (prompt_processor.py, audio_processor.py) ------------------
def upstream_words(words, c1, c2):
    """audio_processor.create_speaker_from_dict: each word's codes, duration and (here given) features."""
    out, start = [], None
    for n, (word, t0, t1, feats) in enumerate(words):
        if start is None:
            start = max(0, int(t0 * 75) - 20)
        end = min(len(c1), int(t1 * 75) + 20) if n == len(words) - 1 else int(t1 * 75)
        out.append({"word": word, "duration": round(len(c1[start:end]) / 75, 2), "c1": c1[start:end],
                    "c2": c2[start:end], "features": feats})
        start = end
    return out


def upstream_feats(f):
    return "".join(f"<|{k}_{f.get(k, 0)}|>" for k in ("energy", "spectral_centroid", "pitch"))


def upstream_codes(words):
    """PromptProcessor.create_codes."""
    return "\n".join("<|word_start|>" + w["word"] + "<|features|>" + "<|t_{:.2f}|>".format(w["duration"])
                     + upstream_feats(w["features"]) + "<|code|>"
                     + "".join(f"<|c1_{a}|><|c2_{b}|>" for a, b in zip(w["c1"], w["c2"])) + "<|word_end|>"
                     for w in words)


def upstream_completion(text, speaker_text, words):
    """PromptProcessor.get_completion_prompt (texts already normalized)."""
    rs = "" if not speaker_text else (" " if speaker_text[-1] in ".?!" else ". ")
    words[-1]["word"] += rs.strip()
    return (f"<|im_start|>\n<|text_start|>{speaker_text + rs + text}<|text_end|>\n<|audio_start|>\n"
            + upstream_codes(words) + "\n<|word_start|>")


def upstream_training(text, words, global_features):
    """PromptProcessor.get_training_prompt."""
    return (f"<|im_start|>\n<|text_start|>{text}<|text_end|>\n<|audio_start|>\n"
            f"<|global_features_start|>{upstream_feats(global_features)}<|global_features_end|>\n"
            + upstream_codes(words) + "\n<|audio_end|>\n<|im_end|>\n")


def utterance(text, timings, frames, seed, features=None, with_features=True):
    """An Utterance with word timings (and per-word features) and the same data in upstream's form."""
    from spade_tts.families.base import Utterance, Word

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1024, size=(2, frames))
    feats = [{"energy": int(rng.integers(0, 101)), "spectral_centroid": int(rng.integers(0, 101)),
              "pitch": int(rng.integers(0, 101))} if with_features else {} for _ in timings]
    words = [Word(w, t0, t1, f or None) for (w, t0, t1), f in zip(timings, feats)]
    up = upstream_words([(w, t0, t1, f) for (w, t0, t1), f in zip(timings, feats)], codes[0].tolist(),
                        codes[1].tolist())
    return Utterance(text, codes, "spk", words=words, features=features), up


SPEAKER_TIMINGS = [("good", 0.40, 0.61), ("night", 0.65, 1.03)]  # first word cut from frame 10, last ends at 60
TARGET_TIMINGS = [("hello", 0.05, 0.33), ("there", 0.37, 0.50)]


def test_completion_prompt_with_speaker(oute):
    with pytest.warns(UserWarning, match="without word timings"):
        ids = oute.prompt_ids("hello there", "good night", np.zeros((2, 4), dtype=np.int64))
    head = enc(oute, "<|im_start|>\n<|text_start|>good night. hello there<|text_end|>\n<|audio_start|>\n")
    assert ids[: len(head)] == head
    assert ids[-1] == enc(oute, "<|word_start|>")[0] and enc(oute, "<|code|>")[0] in ids


def test_completion_prompt_equals_upstream_string(oute):
    """A voice prompt with word timings and features: every token as upstream's get_completion_prompt writes it
    (the separator on the speaker's last word, '\n' between blocks, '\n<|word_start|>' at the end)."""
    speaker, up = utterance("good night", SPEAKER_TIMINGS, 70, seed=1)
    assert oute.prompt_ids("hello there", prompt=speaker) == enc(
        oute, upstream_completion("hello there", "good night", up))
    assert [len(w["c1"]) for w in up] == [35, 25]  # frames int(.40*75)-20=10..int(.61*75)=45, 45..70 (clamped)


def test_completion_prompt_sentence_end_adds_no_period(oute):
    speaker, up = utterance("good night.", [("good", 0.0, 0.2), ("night.", 0.2, 0.5)], 40, seed=2)
    assert oute.prompt_ids("hello there", prompt=speaker) == enc(
        oute, upstream_completion("hello there", "good night.", up))


def test_completion_prompt_without_timings_keeps_every_frame_in_order(oute):
    """The approximation for a (text, codes) voice prompt: upstream's layout with the frames shared among the words."""
    codes = np.random.default_rng(3).integers(0, 1024, size=(2, 9))
    with pytest.warns(UserWarning, match="word timings"):
        ids = oute.prompt_ids("hello there", "good night", codes)
    assert oute.ids_to_codes(ids).tolist() == codes.tolist()
    assert ids.count(enc(oute, "<|word_start|>")[0]) == 3 and ids.count(enc(oute, "<|word_end|>")[0]) == 2


def test_training_sequence_has_v1_word_blocks(oute):
    target, _ = utterance("hello there", TARGET_TIMINGS, 6, seed=4)
    seq, _ = oute.training_sequence(target)
    for marker in ("<|global_features_start|>", "<|global_features_end|>", "<|word_start|>", "<|features|>",
                   "<|code|>", "<|word_end|>"):
        assert enc(oute, marker)[0] in seq, marker


def test_training_sequence_equals_upstream_training_prompt(oute):
    glob = {"energy": 13, "spectral_centroid": 20, "pitch": 28}
    target, up = utterance("hello there", TARGET_TIMINGS, 50, seed=5, features=glob)
    seq, loss_from = oute.training_sequence(target)
    assert seq == enc(oute, upstream_training("hello there", up, glob))
    # the loss covers what the model writes after '<|audio_start|>\n': global features onwards
    assert seq[loss_from] == NEWLINE and seq[loss_from - 1] == enc(oute, "<|audio_start|>")[0]
    assert seq[loss_from + 1] == enc(oute, "<|global_features_start|>")[0]


def test_cloning_training_sequence_continues_the_completion_prompt(oute):
    speaker, up_s = utterance("good night", SPEAKER_TIMINGS, 70, seed=6)
    target, up_t = utterance("hello there", TARGET_TIMINGS, 30, seed=7)
    seq, loss_from = oute.training_sequence(target, speaker)
    prompt = upstream_completion("hello there", "good night", up_s)
    full = prompt + upstream_codes(up_t)[len("<|word_start|>"):] + "\n<|audio_end|>\n<|im_end|>\n"
    assert seq == enc(oute, full)
    assert seq[: loss_from + 1] == enc(oute, prompt)  # loss from the target's first word on


def test_missing_word_timings_is_one_clear_error(oute, tmp_path):
    from spade_tts.families.base import Utterance
    from spade_tts.families.data import load_utterances

    with pytest.raises(ValueError, match=r"need word timings: add `words` \[\{word,start,end\}\]"):
        oute.training_sequence(Utterance("hello there", np.zeros((2, 6), dtype=np.int64)))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"codes": [[1, 2], [3, 4]], "text": "hello there"}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:1: OuteTTS 1\.0 training sequences need word timings") as e:
        load_utterances(oute, manifest)
    assert "\n" not in str(e.value)


def test_word_frames_cut_as_upstream():
    from spade_tts.families.base import Word
    from spade_tts.families.outetts import word_frames

    timings = [("a", 0.5, 0.8), ("b", 0.9, 1.2), ("c", 1.3, 1.5)]
    up = upstream_words([(w, s, e, {}) for w, s, e in timings], list(range(200)), list(range(200)))
    spans = word_frames([Word(w, s, e) for w, s, e in timings], 200)
    assert [list(range(a, b)) for a, b in spans] == [w["c1"] for w in up]
    assert spans[0][0] == int(0.5 * 75) - 20 and spans[-1][1] == int(1.5 * 75) + 20
    assert word_frames([Word(w, s, e) for w, s, e in timings], 100)[-1][1] == 100  # clamped to the codes


# -- features ------------------------------------------------------------------------------------------------
def test_audio_features_of_a_tone():
    """A 200 Hz tone of amplitude 0.5 at 24 kHz: RMS 0.354 -> 35; centroid 200/12000 -> 2; pitch (200-75)/525 -> 24."""
    from spade_tts.families.outetts import audio_features

    sr = 24000
    t = np.arange(sr // 2) / sr
    f = audio_features(0.5 * np.sin(2 * np.pi * 200 * t), sr)
    assert f["energy"] == round(100 * 0.5 / np.sqrt(2))
    assert abs(f["spectral_centroid"] - round(100 * 200 / 12000)) <= 1
    assert abs(f["pitch"] - round(100 * (200 - 75) / 525)) <= 1
    high = audio_features(0.5 * np.sin(2 * np.pi * 400 * t), sr)
    assert high["pitch"] > f["pitch"] and high["spectral_centroid"] > f["spectral_centroid"]
    quiet = audio_features(0.1 * np.sin(2 * np.pi * 200 * t), sr)
    assert quiet["energy"] < f["energy"] and quiet["pitch"] == f["pitch"]


def test_audio_features_of_silence_and_noise():
    from spade_tts.families.outetts import audio_features

    assert audio_features(np.zeros(0), 24000) == {"energy": 0, "spectral_centroid": 0, "pitch": 0}
    silent = audio_features(np.zeros(4800), 24000)
    assert silent == {"energy": 0, "spectral_centroid": 0, "pitch": 0}  # unvoiced frames count as 75 Hz -> 0
    noise = audio_features(np.random.default_rng(0).uniform(-0.5, 0.5, 24000), 24000)
    assert 40 <= noise["spectral_centroid"] <= 60  # white noise: the centroid sits mid-band


def test_data_hook_computes_features_from_audio(oute, tmp_path):
    """A row with codes, audio and word timings: per-word features from the word's audio, global from all of it."""
    import json

    import soundfile as sf

    from spade_tts.families.data import load_utterances
    from spade_tts.families.outetts import audio_features

    sr = 24000
    t = np.arange(sr) / sr
    wav = np.where(t < 0.5, 0.5 * np.sin(2 * np.pi * 150 * t), 0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wav, sr, subtype="FLOAT")
    words = [{"word": "hello", "start": 0.0, "end": 0.5}, {"word": "there", "start": 0.5, "end": 1.0}]
    row = {"audio": "a.wav", "codes": np.zeros((2, 75), int).tolist(), "text": "hello there", "words": words}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    utt = load_utterances(oute, tmp_path / "m.jsonl")[0]
    first, second = (w.features for w in utt.words)
    assert first == audio_features(wav[: sr // 2], sr) and second == audio_features(wav[sr // 2:], sr)
    assert first["energy"] > second["energy"] and first["pitch"] < second["pitch"]
    assert utt.features == audio_features(wav, sr)
    seq, _ = oute.training_sequence(utt)
    assert enc(oute, "<|global_features_start|>" + upstream_feats(utt.features))[-1] in seq
    assert all(enc(oute, upstream_feats(f))[0] in seq for f in (first, second))


def test_codes_only_rows_warn_that_features_are_defaults(oute, tmp_path):
    import json

    from spade_tts.families.data import load_utterances

    row = {"codes": np.zeros((2, 10), int).tolist(), "text": "hello", "words": [{"word": "hello", "start": 0,
                                                                                   "end": 0.1}]}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.warns(UserWarning, match="no audio.*0"):
        utt = load_utterances(oute, tmp_path / "m.jsonl")[0]
    seq, _ = oute.training_sequence(utt)
    assert seq.count(enc(oute, "<|energy_0|>")[0]) == 2  # global block and the word: upstream's default 0


def test_text_normalized_as_upstream():
    from spade_tts.families.outetts import normalize_text

    assert normalize_text("  \u201cHello ,world\u201d  ") == "Hello, world"
    assert normalize_text("can \u2019t stop!!! Wait\u2026 now") == "can't stop! Wait... now"
    assert normalize_text("a \u2014\u2014 b") == "a - b"
    assert normalize_text("a b\tc") == "a bc"  # upstream drops control characters (a tab too) before spacing


# -- generation -----------------------------------------------------------------------------------------------
def symbols(oute, ids):
    """Generated ids as upstream's layout symbols: S word_start, w word text, F features, t time, e/s/p energy,
    spectral centroid, pitch, K code, a c1, b c2, E word_end, n newline, $ stop."""
    names = {"<|word_start|>": "S", "<|features|>": "F", "<|code|>": "K", "<|word_end|>": "E", "\n": "n",
             "<|audio_end|>": "$", "<|im_end|>": "$", "<|global_features_start|>": "G",
             "<|global_features_end|>": "g"}
    out = ""
    for tok in oute.tokenizer.convert_ids_to_tokens(ids):
        if tok in names:
            out += names[tok]
        elif tok.startswith("<|c1_"):
            out += "a"
        elif tok.startswith("<|c2_"):
            out += "b"
        elif tok.startswith("<|t_"):
            out += "t"
        elif tok.startswith(("<|energy_", "<|spectral_centroid_", "<|pitch_")):
            out += tok[2]
        elif tok.startswith("<|") and not tok.startswith("<|dummy_"):
            out += "?"
        else:
            out += "w"
    return out


WORD = r"w{1,16}FtespK(?:ab)*E"


def test_generation_may_write_word_blocks(oute):
    rows = set(oute.layout.head_rows().tolist())
    assert {enc(oute, t)[0] for t in ("<|word_start|>", "<|word_end|>", "<|features|>", "<|code|>")} <= rows
    # without a voice the model starts with the global features block (as trained) or a word
    head = oute.layout.head_rows()
    first = oute.token_mask(0, head, [oute.prompt_ids("hello there")], [[]])[0]
    assert set(head[first].tolist()) == {enc(oute, "<|global_features_start|>")[0], enc(oute, "<|word_start|>")[0]}


@pytest.mark.parametrize("engine", ["static", "hf"])
def test_sampled_generation_follows_the_word_blocks(oute, engine):
    """Sampled from a random model: whatever it writes follows upstream's word-block grammar, and the codes that
    come out are exactly upstream's extraction (every c1 and every c2, in order)."""
    import re

    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids

    speaker, _ = utterance("good night", SPEAKER_TIMINGS, 70, seed=8)
    prompts = [oute.prompt_ids("hello there", prompt=speaker), oute.prompt_ids("thank you")]
    with pytest.warns(UserWarning, match="max_new_tokens"):
        out = generate_ids(oute, prompts, GenerationConfig(temperature=1.0, top_p=1.0, seed=3, max_new_tokens=90,
                                                           min_new_tokens=90, decoder=engine))
    with_speaker, fresh = (symbols(oute, o) for o in out)
    # a prefix of the language: complete it with what each cut-off state still needs, then match the whole
    closes = ["", "E", "bE", "FtespKE", "tespKE", "espKE", "spKE", "pKE", "KE", "wFtespKE", "SwFtespKE"]
    assert any(re.fullmatch(rf"{WORD}(?:nS{WORD})*", with_speaker + c) for c in closes), with_speaker
    assert any(re.fullmatch(rf"(?:Gespgn)?S{WORD}(?:nS{WORD})*", fresh + c)
               for c in ["espgnSwFtespKE", "spgnSwFtespKE", "pgnSwFtespKE", "gnSwFtespKE", "nSwFtespKE"] + closes), fresh
    assert "ab" in with_speaker
    for ids in out:
        c1 = [i - C1 for i in ids if C1 <= i < C1 + 1024]
        c2 = [i - C2 for i in ids if C2 <= i < C2 + 1024]
        t = min(len(c1), len(c2))
        assert oute.ids_to_codes(ids).tolist() == [c1[:t], c2[:t]]


def test_stop_only_after_a_whole_word(oute):
    """With stops allowed, a generation ends with '<|word_end|>\n<|audio_end|>' or runs on; never a stop mid-word."""
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_ids

    stop = enc(oute, "<|audio_end|>")[0]
    im_end = enc(oute, "<|im_end|>")[0]
    prompt = oute.prompt_ids("hello there", prompt=utterance("good night", SPEAKER_TIMINGS, 70, seed=8)[0])
    # make the stops, <|word_end|> and <|features|> the most likely tokens everywhere (the HF engine runs lm_head):
    # only the grammar keeps them where upstream's layout has them
    pushed = [stop, im_end] + [enc(oute, t)[0] for t in ("<|word_end|>", "<|features|>")]

    def hook(module, args, output):
        output = output.clone()
        output[..., pushed] += 1e4
        return output

    handle = oute.lm.lm_head.register_forward_hook(hook)
    try:
        new = generate_ids(oute, [prompt], GenerationConfig(greedy=True, max_new_tokens=60, decoder="hf"))[0]
        pushed[:] = pushed[2:]  # stops no longer pushed: word after word, joined by '\n<|word_start|>'
        with pytest.warns(UserWarning, match="max_new_tokens"):
            more = generate_ids(oute, [prompt], GenerationConfig(greedy=True, max_new_tokens=30, min_new_tokens=30,
                                                                   decoder="hf"))[0]
    finally:
        handle.remove()
    assert symbols(oute, new) == "wFtespKabEn$"  # the shortest whole word, then the stop
    assert symbols(oute, more) == ("wFtespKabEnS" * 3)[:30]


# -- sampling -------------------------------------------------------------------------------------------------
def test_generation_defaults_are_upstreams_sampler(oute):
    cfg = oute.generation_defaults()
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p) == (0.4, 40, 0.9, 0.05)
    assert (cfg.repetition_penalty, cfg.repetition_window) == (1.1, 64)
    assert oute.generation_defaults(temperature=0.7).temperature == 0.7


def test_generate_without_config_uses_the_family_defaults(oute, monkeypatch):
    from spade_tts.families import generate

    from spade_tts.families.outetts import OuteTTSSpeechLM

    seen = []
    real = generate._pick
    monkeypatch.setattr(oute, "generation_defaults", lambda **kw: OuteTTSSpeechLM.generation_defaults(oute, max_new_tokens=3))
    monkeypatch.setattr(generate, "_pick", lambda logits, cfg, gen: seen.append(cfg) or real(logits, cfg, gen))
    with pytest.warns(UserWarning, match="max_new_tokens"):
        generate.generate_ids(oute, [oute.prompt_ids("hello there")], None)
    assert seen and seen[0].min_p == 0.05 and seen[0].repetition_window == 64


def test_repetition_penalty_over_a_recent_window():
    """HF's rule over the last N tokens (upstream's patched RepetitionPenaltyLogitsProcessor: N = 64)."""
    import torch

    from spade_tts.families.generate import repetition_penalty

    rows = [10, 11, 12, 13]
    col = {r: c for c, r in enumerate(rows)}
    logits = torch.tensor([[2.0, -2.0, 3.0, 1.0]])
    ctx = [13] + [99] * 5 + [10, 11, 10]  # 13 is 8 tokens back; 10 appears twice; 99 is not a row
    out = repetition_penalty(logits, col, [ctx], 1.25, window=4)
    assert torch.allclose(out, torch.tensor([[2.0 / 1.25, -2.0 * 1.25, 3.0, 1.0]]))  # once each; 13 is out of the window
    assert abs(float(repetition_penalty(logits, col, [ctx], 1.25, window=0)[0, 3]) - 1.0 / 1.25) < 1e-6  # 0 = all
    assert torch.equal(logits, torch.tensor([[2.0, -2.0, 3.0, 1.0]]))  # not in place


def test_top_k_and_min_p_filters():
    import torch

    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import _pick

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])).repeat(400, 1)
    gen = torch.Generator().manual_seed(0)
    picks = set(_pick(logits, GenerationConfig(temperature=1.0, top_p=1.0, min_p=0.1), gen).tolist())
    assert picks == {0, 1, 2}  # 0.04 and 0.01 are under 0.1 x 0.5
    picks = set(_pick(logits, GenerationConfig(temperature=1.0, top_p=1.0, top_k=2), gen).tolist())
    assert picks == {0, 1}
    picks = set(_pick(logits, GenerationConfig(temperature=1.0, top_p=1.0), gen).tolist())
    assert {0, 1, 2, 3} <= picks


def test_loads_a_tokenizer_with_only_v1_markers(tmp_path):
    from spade_tts.families.registry import load_speech_lm

    path = save_tiny_llama(tmp_path / "oute", VOCAB, oute_tokenizer(False, values=False), layers=2, bos_token_id=128000,
                           eos_token_id=LLAMA3_TEXT_VOCAB + 1)
    assert load_speech_lm(path, "outetts").family == "outetts"


def test_loads_with_a_1025th_code_token(tmp_path):
    from spade_tts.families.registry import load_speech_lm

    path = save_tiny_llama(tmp_path / "oute", VOCAB, oute_tokenizer(True, per_codebook=1025), layers=2,
                           bos_token_id=128000, eos_token_id=LLAMA3_TEXT_VOCAB + 1)
    oute = load_speech_lm(path, "outetts")
    codes = np.array([[0, 1023], [5, 7]])
    assert oute.codes_to_ids(codes) == [C1, C1 + 1025 + 5, C1 + 1023, C1 + 1025 + 7]
    assert oute.ids_to_codes(oute.codes_to_ids(codes)).tolist() == codes.tolist()


def test_codec_is_ibm_dac_speech(oute, monkeypatch, tmp_path):
    loaded = []
    weights = tmp_path / "weights_24khz_1.5kbps_v1.0.pth"
    weights.write_bytes(b"w")

    class Model:
        def eval(self):
            return self

        def parameters(self):
            import torch

            yield torch.zeros(1)

    dac = types.ModuleType("dac")
    dac.utils = types.SimpleNamespace(download=lambda model_type="44khz", **kw: loaded.append(("download", model_type))
                                      or str(tmp_path / f"weights_{model_type}_8kbps_0.0.4.pth"))
    dac.DAC = types.SimpleNamespace(load=lambda path, **kw: loaded.append(("load", str(path))) or Model())
    monkeypatch.setitem(sys.modules, "dac", dac)
    hub = types.ModuleType("huggingface_hub")
    hub.hf_hub_download = lambda repo_id, filename, **kw: (
        str(weights) if (repo_id, filename) == ("ibm-research/DAC.speech.v1.0", weights.name) else None)
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.delenv("SPADE_DAC", raising=False)
    monkeypatch.setattr(codec_hooks, "_LOADED", {})  # no codec loaded by an earlier test
    oute.codec()
    assert loaded and loaded[-1] == ("load", str(weights)), loaded
