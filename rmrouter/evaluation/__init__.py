"""Downstream evaluation of trained policies: GSM8K accuracy and a judged, length-controlled win rate."""

from rmrouter.evaluation.evaluation import Evaluation
from rmrouter.evaluation.metrics import gsm8k_correct, length_controlled_win_rate, win_outcome

__all__ = ["Evaluation", "gsm8k_correct", "length_controlled_win_rate", "win_outcome"]
