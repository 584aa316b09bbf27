"""Former home of the scorer factory and helpers, kept so existing imports keep working.

New code imports from `rewards` (or the owning module: rewards.factory, rewards.batch,
rewards.inprocess, rewards.spec). Owns nothing.
"""

from rewards.batch import RewardBatch, RewardScorer, combine
from rewards.factory import build_scorer, make_scorer
from rewards.inprocess import InProcessScorer

__all__ = [
    "InProcessScorer",
    "RewardBatch",
    "RewardScorer",
    "build_scorer",
    "combine",
    "make_scorer",
]
