"""One routed step, the same in the LM module and in every simulated stream: route, label, loss, observe."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from rmrouter.routers.base import PairBatch, PairJudge, Router, Routing


def route_and_observe(
    router: Router, pairs: PairBatch, judge: PairJudge, train: Callable[[Tensor], Tensor]
) -> tuple[Routing, Tensor]:
    """Routes `pairs`, trains on the routed labels, and hands the router the per-pair losses.

    Args:
        router: Labels the pairs (one RM per pair, or an ensemble).
        pairs: The unordered candidate pairs.
        judge: What the router asks for RM scores.
        train: `[P]` labels (+1 first, -1 second, 0 none) to the `[P]` per-pair losses of the policy before its
            update (NaN for pairs not trained on); the learner's forward pass.

    Returns:
        The routing and the losses the router observed.
    """
    routing = router.route(pairs, judge)
    losses = train(routing.preference.detach().float().cpu())
    router.observe(routing, losses)
    return routing, losses
