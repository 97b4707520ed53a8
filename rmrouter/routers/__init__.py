"""Routers: what picks the RM that labels each pair (the offline prior, and the online routers that consume it)."""

from rmrouter.routers.decisions import LinUCB, majority_vote, uwo_scores
from rmrouter.routers.normalizer import QuantileNormalizer, batch_baseline
from rmrouter.routers.posterior import GaussianPosteriors
from rmrouter.routers.prior import FORMAT_VERSION, RouterPrior, RouterPriorError

__all__ = [
    "FORMAT_VERSION",
    "GaussianPosteriors",
    "LinUCB",
    "QuantileNormalizer",
    "RouterPrior",
    "RouterPriorError",
    "batch_baseline",
    "majority_vote",
    "uwo_scores",
]
