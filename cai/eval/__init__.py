"""`cai eval`: what training changed, on held-out red-team and benign prompts, with intervals."""

from cai.eval.run import EvalConfig, run_eval, summary_lines

__all__ = ["EvalConfig", "run_eval", "summary_lines"]
