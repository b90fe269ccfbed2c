"""The committed reference model: loads as a plain HF checkpoint and follows its prompt's voice."""
import json

import numpy as np
from transformers import AutoModelForCausalLM

from spade_tts.audio import to_mono_16k
from spade_tts.data.voices import synthesize
from spade_tts.families import BUILTIN_MODEL, BUILTIN_TOKENS
from spade_tts.families.builtin import BuiltinSpeechLM
from spade_tts.families.registry import load_speech_lm
from spade_tts.scoring import get_speaker_encoder
from spade_tts.synthesis import synthesize as speak


def test_builtin_weights_load_with_auto_class():
    model = AutoModelForCausalLM.from_pretrained(BUILTIN_MODEL)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 8
    tts = load_speech_lm()  # no model named: the built-in one, as the builtin family
    assert isinstance(tts, BuiltinSpeechLM) and model.config.vocab_size == tts.vocab.size == tts.vocab_size


def test_distillation_draws_on_the_tokens_the_shipped_model_was_trained_on():
    """`spade distill` and `spade compress` default to BUILTIN_TOKENS; a stale path would distil from another data set."""
    trained_on = json.loads((BUILTIN_MODEL / "spade_train_config.json").read_text())["tokens_dir"]
    assert BUILTIN_TOKENS == trained_on


def test_builtin_model_speaks_in_the_prompt_voice():
    tts = load_speech_lm("built-in")
    prompt_text = "The birch canoe slid on the smooth planks."
    prompts = {v: to_mono_16k(u.audio, u.sample_rate)
               for v, u in zip(("flite_slt", "flite_awb"), [synthesize([prompt_text], v)[0] for v in ("flite_slt", "flite_awb")])}
    settings = tts.generation_defaults(temperature=0.0, max_seconds=6.0)
    text = "Glue the sheet to the dark blue background."
    out = {v: speak(tts, [text], [a], [prompt_text], settings)[0] for v, a in prompts.items()}
    for r in out.values():
        assert r.audio.dtype == np.float32 and 0.5 < len(r.audio) / 16000 <= 6.0
        assert 0 <= r.codes.min() and r.codes.max() < tts.codec.config.codebook_size
    enc = get_speaker_encoder()
    # Each output is closer to its own prompt's voice than to the other prompt's voice.
    assert enc.similarity(out["flite_slt"].audio, prompts["flite_slt"]) > enc.similarity(out["flite_slt"].audio, prompts["flite_awb"])
    assert enc.similarity(out["flite_awb"].audio, prompts["flite_awb"]) > enc.similarity(out["flite_awb"].audio, prompts["flite_slt"])


def test_sampling_defaults_come_from_the_model_folder(tmp_path):
    """The temperature, nucleus and soft decoding the weights were measured best at travel in their
    generation_config.json (a pruned student's copy too); a folder without them samples at temperature 1, top-p
    0.8 and decodes the drawn codes; a stage's setting wins."""
    import json

    from spade_tts.families.builtin import shipped_sampling

    shipped = json.loads((BUILTIN_MODEL / "generation_config.json").read_text())
    tts = load_speech_lm()
    own = {"temperature": shipped["temperature"], "top_p": shipped["top_p"], "soft_codes": shipped["soft_codes"]}
    defaults = tts.generation_defaults()
    assert {k: getattr(defaults, k) for k in own} == own
    assert tts.generation_config(temperature=1.0, top_p=None).temperature == 1.0
    assert tts.generation_config(soft_codes=False).soft_codes is False
    tts.save_pretrained(tmp_path / "copy")  # what `spade prune` and distillation exports write
    assert shipped_sampling(tmp_path / "copy") == own
    assert shipped_sampling(tmp_path) == {"temperature": 1.0, "top_p": 0.8, "soft_codes": False}
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.5}))
    assert shipped_sampling(tmp_path) == {"temperature": 0.5, "top_p": 0.8, "soft_codes": False}


def test_a_student_without_codec_weights_reads_them_from_the_model_it_was_pruned_from(tmp_path):
    """The shipped student stores no second copy of the 11 MB codec; any other folder without one is refused."""
    import json
    import shutil

    import pytest
    import torch

    student = tmp_path / "student"
    shutil.copytree(BUILTIN_MODEL, student)
    (student / "codec.safetensors").unlink()
    (student / "spade_pruning.json").write_text(json.dumps({"source_model": "built-in"}))
    loaded, full = BuiltinSpeechLM.from_pretrained(student), BuiltinSpeechLM.from_pretrained(BUILTIN_MODEL)
    mine, theirs = loaded.codec.net.state_dict(), full.codec.net.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    other = tmp_path / "other-codec"
    other.mkdir()
    shutil.copy(BUILTIN_MODEL / "codec.safetensors", other)
    (other / "codec.json").write_text(json.dumps({**json.loads((BUILTIN_MODEL / "codec.json").read_text()), "stride": 4}))
    (student / "spade_pruning.json").write_text(json.dumps({"source_model": str(other)}))
    with pytest.raises(FileNotFoundError, match="no codec weights"):
        BuiltinSpeechLM.from_pretrained(student)  # a source with another codec is not borrowed from
    (student / "spade_pruning.json").unlink()
    with pytest.raises(FileNotFoundError, match="copy codec.json and codec.safetensors"):
        BuiltinSpeechLM.from_pretrained(student)
