"""`spade eval` and the HTML report: models side by side on the same items, with uncertainty.

``evaluate_models(EvalConfig(...))`` writes the ``spade-eval/1`` JSON; ``write_report`` turns
it (plus layer scores and a distillation log) into a static folder to read and listen to.
"""
from spade_tts.evaluation.evaluate import EvalConfig, compare_to_first, evaluate_models, format_table
from spade_tts.evaluation.items import ItemsError, parse_items_file
from spade_tts.evaluation.report import write_report
from spade_tts.evaluation.stats import paired_bootstrap

__all__ = ["EvalConfig", "ItemsError", "compare_to_first", "evaluate_models", "format_table", "paired_bootstrap",
           "parse_items_file", "write_report"]
