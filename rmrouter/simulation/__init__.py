"""Simulated online routing: held-out pairs as a stream, the learners they train, the loop and its figures."""

from rmrouter.simulation.learners import LogLinearDPO, OracleLearner
from rmrouter.simulation.loop import StreamLog, run_stream
from rmrouter.simulation.metrics import cumulative_accuracy, reward_auroc, stream_summary
from rmrouter.simulation.stream import PairStream, StreamBatch

__all__ = [
    "LogLinearDPO",
    "OracleLearner",
    "PairStream",
    "StreamBatch",
    "StreamLog",
    "cumulative_accuracy",
    "reward_auroc",
    "run_stream",
    "stream_summary",
]
