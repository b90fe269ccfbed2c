"""The YAML-configured generic adapter, on a tiny random-weight Qwen2 with a ChatML prompt and 15,360 speech tokens
(the built-in tokenizer's count, so that its real codec can stand behind the hooks)."""
from __future__ import annotations

import numpy as np
import pytest

from family_chain import run_chain, run_speech_chain, save_tokenizer, word_level_tokenizer

TEXT, CODES = 1000, 15_360
IM_START, IM_END, SPEECH_END = TEXT, TEXT + 1, TEXT + 2
S0 = TEXT + 8
VOCAB = S0 + CODES
YAML = """\
speech_token_pattern: "<|speech_{n}|>"
prompt_template: "<|im_start|> user {prompt_text} {text} <|im_end|> <|im_start|> assistant {prompt_speech}"
stop_tokens: ["<|speech_end|>"]
decode: "numpy:asarray"
"""


def build_generic(out, yaml_text: str = YAML, layers: int = 4):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    specials = {"<|im_start|>": IM_START, "<|im_end|>": IM_END, "<|speech_end|>": SPEECH_END}
    tok = word_level_tokenizer(VOCAB, specials, {f"<|speech_{k}|>": S0 + k for k in range(CODES)},
                               split_pattern=r"<\|speech_\d+\|>", eos="<|im_end|>", pad="<|im_end|>")
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 0.5)
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    if yaml_text:
        (out / "spade_family.yaml").write_text(yaml_text)
    return out


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    from spade_tts.families.registry import load_speech_lm

    return load_speech_lm(build_generic(tmp_path_factory.mktemp("generic") / "ckpt"))


def test_layout_from_pattern_and_prompt(generic):
    assert generic.family == "generic"
    assert (generic.layout.speech_start, generic.layout.speech_end, generic.layout.stop_ids) == (S0, VOCAB, (SPEECH_END,))
    w = generic.tokenizer.convert_tokens_to_ids
    ids = generic.prompt_ids("hello there", "good night", np.array([3, 9]))
    assert ids == [IM_START, w("user"), w("good"), w("night"), w("hello"), w("there"), IM_END, IM_START,
                   w("assistant"), S0 + 3, S0 + 9]
    assert generic.ids_to_codes(ids[-2:] + [SPEECH_END, S0]).tolist() == [3, 9]
    with pytest.raises(ValueError):  # numpy:asarray returns one array, not (audio, sample_rate)
        generic.decode_audio(np.array([1, 2]))


def test_bad_configs_are_one_line_errors(tmp_path):
    from spade_tts.families.generic import GenericFamilyConfig

    cases = {"prompt_template: '{text}'\nspeech_tokens: {start: 5, count: 2}\nstop_tokens: [1]\n": "prompt_speech",
             "prompt_template: '{text}{prompt_speech}'\nstop_tokens: [1]\n": "exactly one",
             "prompt_template: '{text}{prompt_speech}'\nspeech_tokens: {start: 5, count: 2}\n": "stop_tokens",
             "colour: red\n": "unknown key"}
    for i, (text, message) in enumerate(cases.items()):
        f = tmp_path / f"{i}.yaml"
        f.write_text(text)
        with pytest.raises(ValueError, match=message):
            GenericFamilyConfig.load(f)


def test_family_config_given_apart(tmp_path):
    """--family-config FILE for a folder without spade_family.yaml; the YAML travels into saved copies."""
    from spade_tts.families.registry import find_family, load_speech_lm

    ckpt = build_generic(tmp_path / "ckpt", yaml_text="")
    assert find_family(ckpt) is None
    (tmp_path / "fam.yaml").write_text(YAML)
    speech = load_speech_lm(ckpt, family_config=tmp_path / "fam.yaml")
    speech.save_pretrained(tmp_path / "copy")
    assert find_family(tmp_path / "copy") == "generic"


def test_generic_chain(tmp_path):
    got = run_chain(tmp_path, build_generic, "generic")
    assert len(got["codes_shape"]) == 1 and all(0 <= c < CODES for c in got["codes"])


def test_generic_speech_chain_wli_eval_compress(tmp_path):
    """With a real codec behind its hooks (the built-in FSQ tokenizer + Griffin-Lim), the generic family runs
    WLI, eval and compress from an audio manifest like any other."""
    yaml_text = YAML.replace('decode: "numpy:asarray"', 'encode: "builtin_codec:encode"\ndecode: "builtin_codec:decode"')
    ckpt = build_generic(tmp_path / "ckpt", yaml_text=yaml_text)
    got = run_speech_chain(tmp_path, ckpt, "generic", max_new_tokens=40)
    assert got["eval"]["models"][0]["audio_seconds"] > 0
