"""Reward models: everything a router can choose from implements `RewardModel.score`."""

from rmrouter.reward_models.base import RewardModel
from rmrouter.reward_models.gsm8k_verifier import GSM8KVerifierRewardModel, final_number
from rmrouter.reward_models.heuristics import LengthRewardModel
from rmrouter.reward_models.judge_cost import GPUTime, JudgeCall, JudgeCost
from rmrouter.reward_models.learned import LearnedRewardModel
from rmrouter.reward_models.likelihood import LikelihoodRewardModel
from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.reward_models.recorded_judge import RecordedJudgeRewardModel
from rmrouter.reward_models.reference_similarity import ReferenceSimilarityRewardModel
from rmrouter.reward_models.sequence_classifier import SequenceClassifierRewardModel

__all__ = [
    "GPUTime",
    "GSM8KVerifierRewardModel",
    "JudgeCall",
    "JudgeCost",
    "LearnedRewardModel",
    "LengthRewardModel",
    "LikelihoodRewardModel",
    "RecordedJudgeRewardModel",
    "ReferenceSimilarityRewardModel",
    "RewardModel",
    "RewardModelPool",
    "SequenceClassifierRewardModel",
    "final_number",
]
