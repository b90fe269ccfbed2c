"""`spade compress` end to end on the tiny reference model: every stage runs once, a rerun redoes nothing."""
import json

import pytest
from transformers import AutoConfig

from spade_tts.cli import main
from spade_tts.compress import pipeline
from spade_tts.compress.pipeline import CompressConfig, compress


def tiny_settings(tiny_reference, tiny_corpus, tiny_tokens, out):
    corpus, _, _ = tiny_corpus
    return CompressConfig(
        model=str(tiny_reference), out_dir=str(out), corpus_dir=str(corpus), tokens_dir=str(tiny_tokens),
        score={"items_per_speaker": 1, "compare": False},
        distill={"steps": 2, "batch_size": 2, "data_fraction": 1.0, "warmup": 1, "save_every": 1, "log_every": 1},
        eval={"items_per_speaker": 1, "rtf_runs": 1, "rtf_items": 1, "warmup": 0, "isolate": False, "dnsmos": False,
              "bootstrap_resamples": 100},
    )


def test_compress_runs_every_stage_then_resumes_without_redoing(tiny_reference, tiny_corpus, tiny_tokens, tmp_path,
                                                                monkeypatch):
    cfg = tiny_settings(tiny_reference, tiny_corpus, tiny_tokens, tmp_path / "run")
    summary = compress(cfg)
    assert AutoConfig.from_pretrained(summary["pruned"]).num_hidden_layers == 2  # ratio 0.5 of 4 layers
    assert AutoConfig.from_pretrained(summary["distilled"]).num_hidden_layers == 2
    results = json.loads(open(summary["eval"]).read())
    assert [m["label"] for m in results["models"]] == ["full", "pruned", "distilled"]
    assert [m["layers"] for m in results["models"]] == [4, 2, 2]
    html = open(summary["report"]).read()
    assert all(label in html for label in ("full", "pruned", "distilled")) and "<audio" in html
    scores = json.loads(open(summary["scores"]).read())
    kept = json.loads(open(f"{summary['pruned']}/spade_pruning.json").read())["kept"]
    ranked = sorted(scores["layers"], key=lambda r: (-r["wli"], r["layer"]))
    assert kept == sorted(r["layer"] for r in ranked[:2])  # pruned by the WLI that was just measured
    rows = {m["label"]: m["per_item"] for m in results["models"]}  # the demo's point: distilled against pruned
    diffs = [d["wer"] - p["wer"] for p, d in zip(rows["pruned"], rows["distilled"]) if None not in (p["wer"], d["wer"])]
    gain = summary["distilled_vs_pruned"]
    assert gain["wer"]["n"] == len(diffs) and gain["wer"]["delta"] == pytest.approx(100 * sum(diffs) / len(diffs))
    assert gain["wer"]["ci95"][0] <= gain["wer"]["delta"] <= gain["wer"]["ci95"][1]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    import spade_tts.distill.trainer as trainer
    import spade_tts.importance.layer_importance as importance
    import spade_tts.pruning.prune as prune

    monkeypatch.setattr(importance, "score_layers", must_not_run)
    monkeypatch.setattr(prune, "prune_checkpoint", must_not_run)
    monkeypatch.setattr(trainer, "distill", must_not_run)
    again = compress(cfg)  # eval reads its cached per-model results
    assert json.loads(open(again["eval"]).read())["models"][2]["wer"] == results["models"][2]["wer"]


def test_stage_settings_are_checked(tiny_reference, tiny_corpus, tiny_tokens, tmp_path, capsys):
    cfg = tiny_settings(tiny_reference, tiny_corpus, tiny_tokens, tmp_path / "bad")
    cfg.score = {"items_per_speker": 1}
    with pytest.raises(ValueError, match="unknown score setting"):
        compress(cfg)
    # the last stage's settings are checked before the first stage runs: nothing is scored first
    for stage, settings, says in (("eval", {"decoder": "fast"}, "decoder='fast'"),
                                  ("distill", {"stpes": 5}, "unknown distill setting"),
                                  ("score", {"decoder": "static-int8-compiled"}, "compiled again")):
        cfg = tiny_settings(tiny_reference, tiny_corpus, tiny_tokens, tmp_path / f"bad-{stage}")
        setattr(cfg, stage, settings)
        with pytest.raises(ValueError, match=says):
            compress(cfg)
        assert not (tmp_path / f"bad-{stage}" / "score").exists()
    assert main(["compress", f"model={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "nowhere not found" in capsys.readouterr().err
    assert pipeline.QUICK["own_corpus"] is True
