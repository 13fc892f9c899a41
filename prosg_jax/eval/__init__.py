"""Evaluation of trained runs: :func:`evaluate` (what ``eval.py`` runs), the
scoring of one evaluation set (:mod:`.scoring`) and the report (:mod:`.report`)."""

from prosg_jax.eval.evaluation import PLOT, RESULTS_JSON, RESULTS_MD, evaluate, parse_rows
from prosg_jax.eval.report import plot, results_table
from prosg_jax.eval.scoring import EvalSet, exact_match, load_eval_set, teacher_forced

__all__ = [
    "PLOT",
    "RESULTS_JSON",
    "RESULTS_MD",
    "EvalSet",
    "evaluate",
    "exact_match",
    "load_eval_set",
    "parse_rows",
    "plot",
    "results_table",
    "teacher_forced",
]
