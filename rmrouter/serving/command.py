"""`python cli.py serve`: the reward server's command (the app is `rmrouter.serving.server`)."""

from __future__ import annotations

import logging

from jsonargparse.typing import NonNegativeFloat, PositiveInt

from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import Router
from rmrouter.serving.scorer import RoutedScorer

log = logging.getLogger(__name__)


def serve(
    pool: RewardModelPool,
    router: Router,
    host: str = "127.0.0.1",
    port: PositiveInt = 8000,
    max_request_bytes: PositiveInt = 4 << 20,
    max_batch_groups: PositiveInt = 64,
    batch_wait_ms: NonNegativeFloat = 2.0,
    feedback_window: PositiveInt = 1024,
) -> None:
    """Serves routed rewards over HTTP until interrupted.

    Ctrl-C or SIGTERM: uvicorn finishes the requests in flight, runs the app's shutdown, then stops.

    Args:
        pool: The reward models (e.g. `configs/pool/default.yaml`); they score on the device they were built on.
        router: Any rmrouter router; it routes from its prior or lookup, and a router with online updates learns
            from the losses trainers post to `/feedback`.
        host: The interface to listen on (`0.0.0.0` for every one, e.g. beside a Ray cluster).
        port: The port.
        max_request_bytes: Larger request bodies are refused with 413.
        max_batch_groups: The most prompt groups scored in one batch (a request larger than this is one batch).
        batch_wait_ms: How long a batch waits for more requests to join it once the first has arrived.
        feedback_window: How many recent `/score` requests' routings are kept for `/feedback`.
    """
    import uvicorn

    from rmrouter.serving.server import build_app

    app = build_app(RoutedScorer(pool, router), max_request_bytes, max_batch_groups, batch_wait_ms, feedback_window)
    log.info("serving %s over %s on http://%s:%d", type(router).__name__, pool.names, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
