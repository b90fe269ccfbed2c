import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from spade_tts.cli import STAGES, main, stage_parser
from spade_tts.config import ConfigError, field_comments, load_config


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


def test_floats_without_a_dot_read_as_numbers_in_overrides_and_recipes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("limit: 1e-5\n")  # PyYAML (YAML 1.1) reads this as the text '1e-5'
    cfg = load_config(Demo, recipe, ["lr=2e-4"])
    assert cfg.lr == 2e-4 and isinstance(cfg.lr, float) and cfg.limit == 1e-5


@pytest.mark.parametrize("override,message", [
    ("stepz=3", "unknown setting"),
    ("steps=many", "expected int"),
    ("lr=fast", "expected float"),
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
    for stage in ("data build", "codec fit", "codec eval", "train-reference", "synth"):
        assert stage in out.stdout


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "build", "--recipe", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err
    assert main(["synth", "--text", "Hello there.", "-o", str(tmp_path / "o.wav"),
                 "--prompt-audio", str(tmp_path / "none.wav"), "--prompt-text", "Hi."]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.wav" in err
    (tmp_path / "c.npy").write_bytes(b"")
    assert main(["synth", "--text", "Hello.", "-o", str(tmp_path / "o.wav"), "--prompt-voice", "flite_slt",
                 "--prompt-codes", str(tmp_path / "c.npy"), "--prompt-text", "Hi."]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("spade synth: error:") and "--prompt-voice" in err


def test_cli_version_names_the_installed_package(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"spade-tts {version('spade-tts')}\n"


def test_version_without_package_metadata_comes_from_pyproject(monkeypatch):
    import importlib
    import importlib.metadata
    import re
    from pathlib import Path

    import spade_tts

    pyproject = (Path(spade_tts.__file__).resolve().parent.parent / "pyproject.toml").read_text()
    with monkeypatch.context() as m:
        def not_installed(name):
            raise importlib.metadata.PackageNotFoundError(name)

        m.setattr(importlib.metadata, "version", not_installed)
        importlib.reload(spade_tts)
        assert spade_tts.__version__ == re.search(r'^version = "(.+)"', pyproject, re.M).group(1)
    importlib.reload(spade_tts)


def test_cli_synth_names_a_wrong_input_before_a_missing_one(tmp_path, capsys):
    out = str(tmp_path / "o.wav")
    for argv, says in ((["--text", ""], ("empty", "--text")), (["--text", "   ", "--prompt-voice", "flite_slt"],
                                                               ("empty", "--text")),
                       (["--text", "Hello.", "--prompt-audio", str(tmp_path / "none.wav")], ("none.wav", "not found"))):
        assert main(["synth", *argv, "-o", out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and all(word in err for word in says), err


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


# ---------------------------------------------------------------- the CLI is the table of stages


def _options(stage):
    """(parser, config class, {option string: dest}) of one stage, without --help, --recipe and presets."""
    parser, cls = stage_parser(stage)
    skip = {"help", "recipe", *(flag.lstrip("-") for flag in stage.presets)}
    return parser, cls, {o: a.dest for a in parser._actions for o in a.option_strings if a.dest not in skip}


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_flag_of_every_stage_is_a_config_key(stage):
    import dataclasses

    _, cls, options = _options(stage)
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(options.values()) == names  # no flag without a field, no field without a flag
    for name in names:
        assert options["--" + name.replace("_", "-")] == name
    for option, dest in options.items():
        extra = option not in ("--" + dest.replace("_", "-"), "--no-" + dest.replace("_", "-"))
        assert not extra or stage.aliases[option] == dest, option  # anything else is a declared alias


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_a_flags_help_is_its_fields_comment(stage):
    parser, cls, _ = _options(stage)
    comments = field_comments(cls)
    for action in parser._actions:
        if action.dest in comments:
            assert action.help.startswith(comments[action.dest].replace("%", "%%")), action.dest
            assert "(default: " in action.help


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*stage.name.split(), "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: spade {stage.name} ") and "--recipe" in out


def test_stage_help_is_python_m_and_top_help_imports_no_torch():
    out = subprocess.run([sys.executable, "-m", "spade_tts.cli", "prune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "fraction of layers to REMOVE" in out.stdout
    code = "import sys; from spade_tts.cli import top_parser; top_parser().format_help(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@dataclass
class Commented:
    """A docstring # that is not a comment."""

    a: int = 1  # trailing
    # above b,
    # on two lines
    b: str = "#not-a-comment"
    c: float = 0.0  # first half;
    #                 second half
    # not c's: a section title
    d: bool = False  # d's own

    # parted from e by a blank line

    e: int = 0


def test_field_comments_reads_the_source():
    assert field_comments(Commented) == {"a": "trailing", "b": "above b, on two lines", "c": "first half; second half",
                                         "d": "d's own", "e": ""}


def test_flags_are_typed_like_key_value_and_str_keeps_its_text(tmp_path):
    cfg = load_config(Demo, None, ["lr=2"], flags={"steps": "5", "name": "run: a=b #1", "voices": ["x", "7"],
                                                   "limit": "null"})
    assert cfg == Demo(steps=5, lr=2.0, name="run: a=b #1", voices=["x", "7"], limit=None)
    assert load_config(Demo, None, ["name=a: b=c"]).name == "a: b=c"  # key=value reads a str field the same way
    with pytest.raises(ConfigError, match="expected int"):
        load_config(Demo, None, flags={"steps": "many"})


@pytest.fixture
def captured(monkeypatch):
    """Replace a stage's function by one that records the config it is given."""
    seen = []

    def capture(ref):
        module, attr = ref.split(":")
        monkeypatch.setattr(f"{module}.{attr}", lambda cfg: seen.append(cfg) or {"done": True})
        return seen
    return capture


def test_flag_beats_recipe_beats_preset(tmp_path, captured, capsys):
    seen = captured("spade_tts.compress.pipeline:compress")
    recipe = tmp_path / "c.yaml"
    recipe.write_text(f"out_dir: {tmp_path / 'from-recipe'}\nratio: 0.75\nmetric: angular\nscore: {{seed: 4}}\n")
    assert main(["compress", "--quick", "--recipe", str(recipe), "--ratio", "0.25", "--metric", "first",
                 "metric=block_influence"]) == 0
    cfg = seen[-1]
    assert cfg.own_corpus is True  # the preset, where nothing above it speaks
    assert cfg.out_dir == str(tmp_path / "from-recipe")  # recipe over preset
    assert cfg.score == {"items_per_speaker": 1, "compare": False, "seed": 4}  # mappings merge one level deep
    assert cfg.ratio == 0.25  # flag over recipe
    assert cfg.metric == "block_influence"  # key=value last
    assert capsys.readouterr().out.startswith("settings: {")


def test_path_flags_with_colon_and_equals_survive(tmp_path, captured):
    seen = captured("spade_tts.pruning.prune:prune_checkpoint")
    weird = str(tmp_path / "a=b:c #d")
    assert main(["prune", "--model", weird, "-o", weird + "-out", "--keep", "2", f"scores={weird}.json"]) == 0
    assert (seen[-1].model, seen[-1].out, seen[-1].scores, seen[-1].keep) == (weird, weird + "-out", weird + ".json", 2)


def test_bool_flags_and_their_no_form(captured):
    seen = captured("spade_tts.importance.layer_importance:score_layers")
    assert main(["score", "--no-wli", "--iterative", "--no-compare", "wli=false"]) == 0
    assert (seen[-1].wli, seen[-1].iterative, seen[-1].compare) == (False, True, False)
    assert main(["score", "--wli"]) == 0 and seen[-1].wli is True


def test_prune_keep_replaces_the_recipes_ratio_and_back(tmp_path, captured):
    seen = captured("spade_tts.pruning.prune:prune_checkpoint")
    recipe = tmp_path / "p.yaml"
    recipe.write_text("ratio: 0.5\nkeep: 4\n")
    for argv, want in ((["--keep", "3"], (3, 0.0)), (["keep=3"], (3, 0.0)), (["--ratio", "0.25"], (0, 0.25)),
                       (["--keep", "3", "--ratio", "0.25"], (3, 0.25)), ([], (4, 0.5))):
        assert main(["prune", "--recipe", str(recipe), *argv]) == 0
        assert (seen[-1].keep, seen[-1].ratio) == want, argv


def test_list_flags_hand_trailing_settings_back_and_results_print(captured, capsys):
    seen = captured("spade_tts.data.build:build_corpus")
    assert main(["data", "build", "--voices", "flite_slt", "x=y", "seed=2", "-o", "somewhere"]) == 0
    assert seen[-1].voices == ["flite_slt", "x=y"] and seen[-1].seed == 2 and seen[-1].out_dir == "somewhere"
    assert '"done": true' in capsys.readouterr().out  # data build prints its summary


def test_settings_print_once_under_accelerate(monkeypatch, captured, capsys):
    captured("spade_tts.distill.trainer:distill")
    monkeypatch.setenv("RANK", "1")
    assert main(["distill", "student=x"]) == 0
    assert "settings:" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert main(["distill", "--student", "x"]) == 0
    assert "settings:" in capsys.readouterr().out


def test_command_line_errors_are_one_line(tmp_path, capsys):
    for argv, says in ((["prune", "bogus=1"], "unknown setting(s) bogus"),
                       (["prune", "--keep", "three"], "expected int"),
                       (["report", "-o", str(tmp_path / "r")], "--eval"),
                       (["report", "--eval", str(tmp_path / "none.json"), "-o", str(tmp_path / "r")], "not found"),
                       (["data", "family", "--manifest", "m.jsonl", "-o", "x"], "--model")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"spade {argv[0]}") and says in err, err
