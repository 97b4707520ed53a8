"""Lightning callbacks: the glue between training runs and the artifacts and reports they leave."""

from rmrouter.callbacks.atomic_checkpoint import AtomicCheckpointIO
from rmrouter.callbacks.checkpoint import ResumableCheckpoint
from rmrouter.callbacks.labelling_tally import LabellingTally
from rmrouter.callbacks.offline_report import OfflineRouterReport
from rmrouter.callbacks.online_summary import OnlineSummary
from rmrouter.callbacks.prior_writer import RouterPriorWriter
from rmrouter.callbacks.reward_signal import RewardSignal
from rmrouter.callbacks.routing_predictions import RoutingPredictionWriter
from rmrouter.callbacks.run_config import RunConfigInCheckpoint

__all__ = [
    "AtomicCheckpointIO",
    "LabellingTally",
    "OfflineRouterReport",
    "OnlineSummary",
    "ResumableCheckpoint",
    "RewardSignal",
    "RouterPriorWriter",
    "RoutingPredictionWriter",
    "RunConfigInCheckpoint",
]
