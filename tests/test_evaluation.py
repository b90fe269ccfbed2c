"""`spade eval` and the HTML report: items files, paired bootstrap, two models side by side, resume, Chromium."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from spade_tts.evaluation import EvalConfig, ItemsError, compare_to_first, evaluate_models, paired_bootstrap
from spade_tts.evaluation import evaluate as evaluate_mod
from spade_tts.evaluation.items import parse_items_file
from spade_tts.evaluation.models import parse_model_specs
from spade_tts.evaluation.report import read_loss_log, write_report

MODEL_KEYS = {"wer", "wer_capped", "cer", "sim", "dnsmos", "rtf", "tokens_per_second", "peak_mem_bytes", "params", "layers",
              "vs_first", "per_item"}


# ---------------------------------------------------------------- bootstrap

def test_paired_bootstrap_covers_a_known_difference_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 80, 500):
        a = rng.normal(0.30, 0.15, n)  # item difficulty varies a lot ...
        b = a + 0.05 + rng.normal(0, 0.03, n)  # ... but B is consistently 0.05 worse
        res = paired_bootstrap(list(a), list(b), resamples=2000, seed=0)
        lo, hi = res["ci95"]
        assert res["n"] == n and lo < res["delta"] < hi
        assert lo <= 0.05 <= hi, (n, res)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert paired_bootstrap(list(a), list(b), seed=3) == paired_bootstrap(list(a), list(b), seed=3)


def test_paired_bootstrap_identical_and_missing_values():
    same = paired_bootstrap([0.1, 0.5, 0.2], [0.1, 0.5, 0.2])
    assert same == {"delta": 0.0, "ci95": [0.0, 0.0], "n": 3}
    res = paired_bootstrap([0.1, None, 0.3], [0.2, 0.4, None])
    assert res["n"] == 1 and res["delta"] == pytest.approx(0.1)
    assert paired_bootstrap([None], [0.2])["delta"] is None
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_vs_first_follows_the_papers_table():
    def fake(label, wers, sims, rtf, params, layers, mem):
        return {"label": label, "per_item": [{"id": str(i), "wer": w, "cer": w, "sim": s}
                                             for i, (w, s) in enumerate(zip(wers, sims))],
                "dnsmos": {"p808": 3.0, "ovrl": 2.5}, "rtf": {"lm": rtf, "e2e": 2 * rtf}, "tokens_per_second": 100 / rtf,
                "params": {"lm": params, "system": params + 100}, "layers": layers, "peak_mem_bytes": mem}

    full = fake("full", [0.1, 0.2, 0.0, 0.1], [0.9, 0.8, 0.85, 0.9], 0.5, 1000, 12, 2000)
    small = fake("small", [0.2, 0.2, 0.1, 0.1], [0.85, 0.8, 0.8, 0.9], 0.25, 600, 6, 1500)
    compare_to_first([full, small], resamples=500)
    v = small["vs_first"]
    assert full["vs_first"] is None and v["reference"] == "full"
    assert v["wer"]["delta_points"] == pytest.approx(5.0)
    assert v["wer"]["ci95"][0] <= 5.0 <= v["wer"]["ci95"][1]
    assert v["sim"]["delta"] == pytest.approx(-0.025)
    assert v["rtf"]["lm"]["ratio"] == pytest.approx(0.5) and v["rtf"]["e2e"]["speedup"] == pytest.approx(2.0)
    assert v["params_pct"]["lm"] == pytest.approx(-40.0) and v["layers_pct"] == pytest.approx(-50.0)
    assert v["peak_mem_pct"] == pytest.approx(-25.0)
    small["per_item"] = small["per_item"][:3]
    with pytest.raises(ValueError, match="other items"):
        compare_to_first([full, small])


def test_capped_wer_column_is_not_decided_by_one_hallucinated_item():
    """One item with WER 30 (Whisper babble) swings the plain mean by 7 points; the capped column by at most 0.25."""
    base = [{"id": str(i), "wer": w, "cer": w, "sim": 0.8} for i, w in enumerate([0.5, 0.2, 1.0, 0.4])]
    other = [dict(r) for r in base]
    other[2]["wer"] = 30.0  # unintelligible either way; Whisper wrote thirty times the words
    mk = lambda label, rows: {"label": label, "per_item": rows, "dnsmos": {"p808": 3.0, "ovrl": 2.5},
                              "rtf": {"lm": 1.0, "e2e": 1.0}, "tokens_per_second": 1.0,
                              "params": {"lm": 1, "system": 1}, "layers": 1, "peak_mem_bytes": 1}
    a, b = mk("a", base), mk("b", other)
    compare_to_first([a, b], resamples=300)
    assert b["vs_first"]["wer"]["delta_points"] == pytest.approx(725.0)
    assert b["vs_first"]["wer_capped"]["delta_points"] == pytest.approx(0.0)
    assert evaluate_mod.capped_wers(other) == [0.5, 0.2, 1.0, 0.4]
    b["wer_capped"] = float(np.mean(evaluate_mod.capped_wers(other)))
    a["wer_capped"] = b["wer_capped"]
    head, rows = evaluate_mod.table_rows({"models": [a | {"wer": 0.525, "cer": 0.5, "sim": 0.8}, b | {
        "wer": 7.775, "cer": 0.5, "sim": 0.8}]})
    col = head.index("WER<=100 %")
    assert rows[0][col] == rows[1][col] == "52.5" and rows[1][col + 1].startswith("+0.0")


# ---------------------------------------------------------------- items files and model names

def test_items_file_good_and_bad_lines(tmp_path):
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "p1.wav").write_bytes(b"RIFF")
    good = tmp_path / "good.lst"
    good.write_text("# Seed-TTS-eval style\n\n"
                    "u1|The prompt.|wavs/p1.wav|Say this please.\n"
                    f"u2|Another prompt.|{tmp_path / 'wavs' / 'p1.wav'}|And this.|wavs/gt2.wav\n")
    items = parse_items_file(good)
    assert [it["id"] for it in items] == ["u1", "u2"]
    assert items[0]["prompt_wav"] == str((tmp_path / "wavs" / "p1.wav").resolve())
    assert items[1]["target_text"] == "And this." and items[1]["reference_wav"].endswith("gt2.wav")

    cases = [
        ("u1|only three|wavs/p1.wav\n", "line 1: expected 4 fields"),
        ("u1|A.|wavs/p1.wav|Fine.\nu2|B.|wavs/missing.wav|Fine.\n", "line 2: prompt wav 'wavs/missing.wav' not found"),
        ("u1|A.|wavs/p1.wav|Fine.\nu1|B.|wavs/p1.wav|Again.\n", "line 2: id 'u1' already used on line 1"),
        ("u1||wavs/p1.wav|Fine.\n", "line 1: empty field"),
        ("u1|A.|wavs/p1.wav|...\n", "line 1: target text"),
    ]
    for text, message in cases:
        bad = tmp_path / "bad.lst"
        bad.write_text(text)
        with pytest.raises(ItemsError, match=re.escape(message)) as e:
            parse_items_file(bad)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)
    bad.write_text("a|b\nc|d\nu1|A.|wavs/p1.wav|Fine.\ne\n")
    with pytest.raises(ItemsError, match=r"line 1: .*\(and 2 more bad line\(s\): 2, 4\)"):
        parse_items_file(bad)
    with pytest.raises(ItemsError, match="not found"):
        parse_items_file(tmp_path / "nope.lst")


def test_model_specs_labels(tmp_path):
    (tmp_path / "m").mkdir()
    specs = parse_model_specs(["built-in", str(tmp_path / "m"), f"pruned={tmp_path / 'm'}", str(tmp_path / "m")])
    assert [s.label for s in specs] == ["built-in", "m", "pruned", "m-2"]
    assert specs[0].path == "" and specs[2].path == str((tmp_path / "m").resolve())
    with pytest.raises(ValueError, match="not a folder"):
        parse_model_specs([str(tmp_path / "absent")])
    from spade_tts.families import BUILTIN_STUDENT
    from spade_tts.families.registry import model_folder

    assert model_folder("Built-In-Student") == BUILTIN_STUDENT and model_folder("built-in") != BUILTIN_STUDENT
    if BUILTIN_STUDENT.is_dir():  # the shipped student loads by name, under its name or the label given
        named = parse_model_specs(["full=built-in", "built-in-student", "s=builtin-student"])
        assert [s.label for s in named] == ["full", "built-in-student", "s"]
        assert named[1].path == named[2].path == str(BUILTIN_STUDENT.resolve())
    import subprocess
    import sys

    # the cache key finds the built-in model without importing torch
    code = "import sys, spade_tts.evaluation.models; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# ---------------------------------------------------------------- end to end on the tiny model

def _cfg(tiny_corpus, tiny_reference, out: Path) -> EvalConfig:
    corpus, _, _ = tiny_corpus
    return EvalConfig(models=[f"full={tiny_reference}", f"again={tiny_reference}"], corpus_dir=str(corpus),
                      items_per_speaker=1, max_prompt_seconds=30.0, max_seconds=2.0, out_dir=str(out / "eval"),
                      json=str(out / "eval.json"), warmup=1, rtf_runs=2, rtf_items=1, bootstrap_resamples=200)


@pytest.fixture(scope="module")
def two_models(tiny_corpus, tiny_reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    cfg = _cfg(tiny_corpus, tiny_reference, out)
    return cfg, evaluate_models(cfg)


def test_eval_writes_every_key_and_identical_models_do_not_differ(two_models):
    cfg, data = two_models
    on_disk = json.loads(Path(cfg.json).read_text())
    assert on_disk["format"] == "spade-eval/1" and on_disk["items"]["count"] == 2
    full, again = on_disk["models"]
    for m in (full, again):
        assert MODEL_KEYS <= set(m)
        assert set(m["dnsmos"]) == {"p808", "ovrl"} and set(m["rtf"]) == {"lm", "e2e"}
        assert set(m["params"]) == {"lm", "system"} and m["params"]["system"] > m["params"]["lm"] > 0
        assert m["layers"] == 4 and m["peak_mem_bytes"] > 0 and m["tokens_per_second"] > 0
        assert 0 < m["rtf"]["lm"] < m["rtf"]["e2e"] and len(m["rtf_runs"]["e2e"]) == 2
        assert len(m["per_item"]) == 2
        for row in m["per_item"]:
            assert {"text", "transcript", "wer", "sim", "wav", "prompt_wav"} <= set(row)
            assert Path(row["wav"]).is_file() and Path(row["wav"]).parent.parent.name == m["label"]
    assert full["vs_first"] is None
    v = again["vs_first"]
    assert v["reference"] == "full"
    # the same weights, items and seeds: the same audio, transcripts and scores
    assert [r["transcript"] for r in full["per_item"]] == [r["transcript"] for r in again["per_item"]]
    assert v["wer"]["delta_points"] == 0 and v["wer"]["ci95"][0] <= 0 <= v["wer"]["ci95"][1]
    assert v["cer"]["delta_points"] == 0
    assert v["sim"]["delta"] == pytest.approx(0, abs=1e-6)
    assert v["sim"]["ci95"][0] <= 1e-6 and v["sim"]["ci95"][1] >= -1e-6
    assert v["params_pct"] == {"lm": 0.0, "system": 0.0} and v["layers_pct"] == 0.0
    assert v["rtf"]["e2e"]["ratio"] > 0 and "ci95" in v["wer"] and "ci95" in v["sim"]


def test_finished_models_are_not_recomputed(two_models, monkeypatch, tmp_path):
    cfg, data = two_models
    calls = []
    monkeypatch.setattr(evaluate_mod, "evaluate_one", lambda *a, **k: calls.append(a) or pytest.fail("recomputed"))
    again = evaluate_models(cfg)
    assert calls == [] and again["models"][1]["wer"] == data["models"][1]["wer"]
    # other settings give another key, so the model is evaluated anew (in a copy of the folder; spy only)
    shutil.copytree(cfg.out_dir, tmp_path / "eval")
    monkeypatch.setattr(evaluate_mod, "evaluate_one", lambda *a, **k: calls.append(a[1].label) or data["models"][0])
    for change in ({"top_p": 0.5}, {"sampling_seed": 1}, {"soft_codes": False}):
        evaluate_models(EvalConfig(**{**cfg.__dict__, **change, "models": cfg.models[:1],
                                      "out_dir": str(tmp_path / "eval"), "json": str(tmp_path / "x.json")}))
    assert calls == ["full"] * 3


# ---------------------------------------------------------------- the report, rendered by Chromium

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(two_models, tmp_path):
    _, data = two_models
    scores_dir = tmp_path / "score"
    scores_dir.mkdir()
    layers = [{"layer": i, "wli": 0.5 + 0.1 * i, "block_influence": 0.1, "angular": 0.2, "tf_loss_rise": 0.3}
              for i in range(4)]
    scores = {"format": "spade-scores/1", "num_layers": 4, "full_wer": 0.4, "metrics": ["wli", "block_influence"],
              "layers": layers, "cut_to_keep": {"wli": {"keep": [0, 3], "wer": 0.7}}}
    (scores_dir / "scores.json").write_text(json.dumps(scores))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.bar(range(4), [r["wli"] for r in layers])
    plt.savefig(scores_dir / "importance.png")
    plt.close("all")
    log = tmp_path / "distill.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "loss": 3 / s, "ce": 2 / s, "kd": 1 / s, "lr": 1e-3})
                             for s in range(1, 6)) + "\n")
    assert len(read_loss_log(log)) == 5

    out = tmp_path / "report"
    index = write_report(out, data, scores_dir / "scores.json", log, sentences=2, title="Tiny <b>report</b> & co")
    assert (out / "assets" / "importance.png").is_file() and (out / "assets" / "distill_loss.png").is_file()

    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium binary on PATH (setup.sh installs Debian's `chromium`); the report was written but "
                    "not rendered")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
                           "--dump-dom", index.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count('class="model-row') == 2 and ">full<" in dom and ">again<" in dom
    assert "<b>report</b>" not in dom and "Tiny &lt;b&gt;report&lt;/b&gt; &amp; co" in dom
    assert 'class="scores"' in dom and 'src="assets/importance.png"' in dom and 'src="assets/distill_loss.png"' in dom
    audio_srcs = re.findall(r'<audio[^>]*\ssrc="([^"]+)"', dom)
    assert len(audio_srcs) == 2 * 3  # 2 sentences x (prompt + 2 models)
    for src in audio_srcs:
        assert not src.startswith(("/", "http", "file:")) and (out / unquote(src)).is_file()
    assert dom.count('class="audio-row"') == 2


def test_report_rejects_other_json(tmp_path):
    with pytest.raises(ValueError, match="spade-eval/1"):
        write_report(tmp_path, {"format": "spade-scores/1"})
    bad = tmp_path / "log.jsonl"
    bad.write_text('{"step": 1, "loss": 2}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_loss_log(bad)


def test_cli_eval_help_teaches():
    top = subprocess.run([sys.executable, "-m", "spade_tts.cli", "--help"], capture_output=True, text=True)
    assert top.returncode == 0, top.stderr[-500:]  # a bare '%' in a help string breaks argparse here
    assert re.search(r"^\s+eval\s", top.stdout, re.M) and re.search(r"^\s+report\s", top.stdout, re.M)
    out = subprocess.run([sys.executable, "-m", "spade_tts.cli", "eval", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("--models", "--json", "id|prompt_text|prompt_wav|target_text", "bootstrap", "RTF"):
        assert word in out.stdout, word
    out = subprocess.run([sys.executable, "-m", "spade_tts.cli", "report", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--scores" in out.stdout and "--distill-log" in out.stdout


def test_cli_eval_settings_after_models_and_one_line_errors(tmp_path, monkeypatch, capsys):
    from spade_tts.cli import main

    seen = []
    monkeypatch.setattr(evaluate_mod, "evaluate_models", lambda cfg: seen.append(cfg))
    assert main(["eval", "--models", "built-in", "small=built-in", "seed=3", "rtf_runs=1", "--json", "x.json"]) == 0
    assert seen[0].models == ["built-in", "small=built-in"] and seen[0].seed == 3 and seen[0].rtf_runs == 1
    assert seen[0].json == "x.json"
    monkeypatch.undo()
    bad = tmp_path / "bad.lst"
    bad.write_text("u1|A prompt.|missing.wav|A target.\n")
    assert main(["eval", "--models", "built-in", "--items", str(bad), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 1: prompt wav 'missing.wav' not found" in err
    for setting, says in (("decoder=fast", "decoder='fast'"), ("device=cuda decoder=static-int8", "CPU path"),
                          ("soft_codes=2", "soft_codes=2")):
        assert main(["eval", "--models", "built-in", "-o", str(tmp_path / "o"), *setting.split()]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err, err


# ---------------------------------------------------------------- the report from synthetic results

def _fake_eval(tmp_path: Path, items: list[tuple[str, str]], models: dict[str, str]) -> dict:
    """A spade-eval/1 dict with real (tiny) wav files: ``items`` are (speaker, text), ``models`` label -> folder."""
    import soundfile as sf

    wav = tmp_path / "tone.wav"
    sf.write(wav, (0.1 * np.sin(np.arange(1600) / 5)).astype(np.float32), 16000)
    per_item = [{"id": f"u{i}", "speaker": spk, "text": text, "prompt_text": "A prompt.", "prompt_wav": str(wav),
                 "wav": str(wav), "transcript": text, "wer": 0.5, "sim": 0.8, "seconds": 0.1}
                for i, (spk, text) in enumerate(items)]
    model = {"items": len(items), "guard_hits": 0, "truncated": 0, "layers": 4, "params": {"lm": 1e6, "system": 2e6},
             "wer": 0.774, "wer_capped": 0.70, "cer": 0.5, "sim": 0.8, "dnsmos": {"p808": None, "ovrl": None},
             "rtf": {"lm": 0.1, "e2e": 0.2}, "tokens_per_second": 100.0, "peak_mem_bytes": 2**20,
             "peak_mem_kind": "rss", "vs_first": None, "per_item": per_item}
    return {"format": "spade-eval/1", "items": {"count": len(items), "source": "synthetic"}, "machine": {},
            "models": [{**model, "label": label, "model": folder} for label, folder in models.items()]}


def _listened(page: str) -> list[str]:
    return re.findall(r'<div class="text">(.*?)</div>', page)


def test_listen_rows_play_every_voice_and_every_distinct_sentence_before_any_repeat(tmp_path):
    # each voice reads every sentence, in speaker order: the first rows in order would be one voice
    items = [(spk, text) for spk in ("awb", "rms", "slt") for text in ("One.", "Two.", "Three.", "Four.")]
    page = write_report(tmp_path / "r", _fake_eval(tmp_path, items, {"full": "built-in"}), sentences=3).read_text()
    rows = re.findall(r'<div class="score">(u\d+)</div>', page)
    speakers = [items[int(uid[1:])][0] for uid in rows]
    texts = _listened(page)
    assert sorted(speakers) == ["awb", "rms", "slt"] and len(set(texts)) == 3


def test_listen_rows_never_leave_a_voice_out(tmp_path):
    # the quick demo: 7 voices, 2 held-out sentences, one item per voice, 6 rows asked for
    voices = [f"voice{i}" for i in range(7)]
    items = [(v, "Sentence A." if i % 2 == 0 else "Sentence B.") for i, v in enumerate(voices)]
    page = write_report(tmp_path / "r", _fake_eval(tmp_path, items, {"full": "built-in"}), sentences=6).read_text()
    texts = _listened(page)
    assert len(texts) == 7 and texts[:2] == ["Sentence A.", "Sentence B."]
    assert page.count('class="audio-row"') == 7


def _pixels(png: Path, rgb: tuple[int, int, int]) -> int:
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3] * 255
    return int((np.abs(img - np.array(rgb)).max(axis=-1) < 4).sum())


def test_report_marks_the_layers_the_pruned_model_removed_in_chart_and_table(tmp_path):
    from spade_tts.importance.plots import plot_importance

    pruned = tmp_path / "pruned"
    pruned.mkdir()
    (pruned / "spade_pruning.json").write_text(json.dumps(
        {"format": "spade-pruning/1", "teacher_layers": 4, "student_layers": 2, "kept": [0, 3], "removed": [1, 2],
         "metric": "wli", "source_fingerprint": "f" * 16}))
    layers = [{"layer": i, "wli": 0.8, "block_influence": 0.1} for i in range(4)]
    scores = {"format": "spade-scores/1", "num_layers": 4, "model_fingerprint": "f" * 16, "full_wer": 0.62,
              "full_wer_uncapped": 0.70, "item_wer_cap": 1.0, "items": 7, "metrics": ["wli", "block_influence"],
              "layers": layers}
    (tmp_path / "score").mkdir()
    (tmp_path / "score" / "scores.json").write_text(json.dumps(scores))
    plot_importance(tmp_path / "score" / "importance.png", layers, scores["metrics"], 0.62)  # as `spade score` does
    shutil.copytree(pruned, tmp_path / "distilled")  # `spade distill` keeps the student's record
    data = _fake_eval(tmp_path, [("slt", "One.")], {"full": "built-in", "pruned": str(pruned),
                                                    "distilled": str(tmp_path / "distilled")})
    page = write_report(tmp_path / "r", data, tmp_path / "score" / "scores.json").read_text()

    table = page[page.index('<table class="scores">'):]
    table = table[:table.index("</table>")]
    assert "<th>in pruned, distilled</th>" in table
    assert re.findall(r'<tr class="removed-layer"><td>(\d)</td>', table) == ["1", "2"]
    assert table.count("<td>kept</td>") == 2 and table.count("<td>removed</td>") == 2
    assert "the 2 layers [1, 2] removed in pruned, distilled (ranked by wli" in page
    blue = (0x3B, 0x6E, 0xA8)
    chart, original = tmp_path / "r" / "assets" / "importance.png", tmp_path / "score" / "importance.png"
    assert _pixels(chart, blue) < 0.7 * _pixels(original, blue)  # two of the four WLI bars are no longer blue
    grey = (0xE4, 0xE4, 0xE4)  # the removed bars' fill; the original has it only in anti-aliased edges
    assert _pixels(chart, grey) > 5 * _pixels(original, grey)

    # a pruned model cut from another model is not marked
    other = {**scores, "model_fingerprint": "0" * 16}
    page = write_report(tmp_path / "r2", data, other).read_text()
    assert '<tr class="removed-layer">' not in page and "<th>in pruned" not in page


def test_report_says_why_the_full_model_wer_differs_between_scores_and_metrics(tmp_path):
    import html

    scores = {"format": "spade-scores/1", "num_layers": 2, "full_wer": 0.62, "full_wer_uncapped": 0.70,
              "item_wer_cap": 1.0, "items": 7, "metrics": ["wli"], "layers": [{"layer": 0, "wli": 1.0},
                                                                             {"layer": 1, "wli": 0.9}]}
    data = _fake_eval(tmp_path, [("slt", "One.")] * 5, {"full": "built-in"})
    page = html.unescape(write_report(tmp_path / "r", data, scores).read_text())
    assert ("Full-model WER here: 62.0 % over 7 scoring items, each item's WER capped at 100 % before averaging "
            "(plain mean 70.0 %).") in page
    assert "gives full 77.4 % (WER %), the plain mean over its 5 evaluation items" in page
    assert "capped at 100 % it is 70.0 % (WER<=100 %)" in page
    page = html.unescape(write_report(tmp_path / "r", data, {**scores, "item_wer_cap": 0}).read_text())
    assert "62.0 % over 7 scoring items (plain mean, no cap)." in page


def test_measuring_child_stops_when_its_eval_is_killed(tmp_path):
    """isolate=true's child process (spade_tts.evaluation.measure) ends by itself when its parent dies of a
    signal it could not catch, instead of running on unseen."""
    import os
    import signal
    import time

    child = ("from spade_tts.evaluation.measure import exit_with_parent; exit_with_parent(0.05); "
             "import time; time.sleep(60)")
    parent = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
              "print(p.pid, flush=True); p.wait()")
    proc = subprocess.Popen([sys.executable, "-c", parent, child], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    time.sleep(1.0)  # the child is up and watching
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while _running(pid) and time.time() < deadline:
        time.sleep(0.1)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the measuring child kept running after its parent was killed")


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan is reaped by init shortly after it exits)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sampling_seed_draws_the_same_items_again_and_soft_codes_none_keeps_the_folders_setting():
    from spade_tts.evaluation.evaluate import generation_config
    from spade_tts.families.registry import load_speech_lm

    speech = load_speech_lm()
    assert generation_config(EvalConfig(seed=3), speech).seed == 3
    assert generation_config(EvalConfig(seed=3, sampling_seed=7), speech).seed == 7
    assert generation_config(EvalConfig(), speech).soft_codes == speech.generation_defaults().soft_codes
    assert generation_config(EvalConfig(soft_codes=False), speech).soft_codes is False
