import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from spade_tts.cli import main
from spade_tts.config import ConfigError, load_config


@dataclass
class Demo:
    steps: int = 10
    lr: float = 1e-3
    name: str = "x"
    voices: list[str] = field(default_factory=lambda: ["a"])
    limit: float | None = None


def test_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 20\nname: from-recipe\n")
    cfg = load_config(Demo, recipe, ["lr=5", "voices=[b, c]", "limit=0.5"])
    assert cfg == Demo(steps=20, lr=5.0, name="from-recipe", voices=["b", "c"], limit=0.5)


@pytest.mark.parametrize("override,message", [
    ("stepz=3", "unknown setting"),
    ("steps=many", "expected int"),
    ("steps", "not key=value"),
])
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Demo, None, [override])


def test_missing_recipe(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Demo, tmp_path / "nope.yaml")


def test_cli_help_teaches_every_stage():
    out = subprocess.run([sys.executable, "-m", "spade_tts.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for stage in ("data build", "codec fit", "codec eval", "train-reference", "synth", "eval-reference"):
        assert stage in out.stdout


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "build", "--recipe", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err
    assert main(["synth", "--text", "Hello there.", "-o", str(tmp_path / "o.wav"),
                 "--prompt-audio", str(tmp_path / "none.wav"), "--prompt-text", "Hi."]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.wav" in err
    assert main(["synth", "--text", "Hello.", "-o", str(tmp_path / "o.wav")]) == 2
    assert "--prompt-voice" in capsys.readouterr().err


def test_every_shipped_recipe_loads_into_its_stage(tmp_path):
    """A misspelt key in a recipe fails here, not after a GPU session has started on it."""
    from pathlib import Path

    from spade_tts.codec.train import CodecFitConfig
    from spade_tts.data.build import DataConfig
    from spade_tts.distill.trainer import DistillConfig
    from spade_tts.evaluation.evaluate import EvalConfig
    from spade_tts.reference.train import ReferenceTrainConfig

    stage = {"codec": CodecFitConfig, "data": DataConfig, "distill": DistillConfig, "eval": EvalConfig,
             "reference": ReferenceTrainConfig}
    recipes = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
    assert len(recipes) >= 6
    for recipe in recipes:
        cls = stage[recipe.stem.split("-")[0]]
        cfg = load_config(cls, recipe, ["student=x"] if cls is DistillConfig else [])
        assert isinstance(cfg, cls)
    bad = tmp_path / "reference-typo.yaml"
    bad.write_text("kv_head: 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(ReferenceTrainConfig, bad)
