"""The reward server: routed rewards over HTTP for trainers that call a remote reward model (OpenRLHF, verl, yours).

    python cli.py serve --config configs/serve.yaml   (rmrouter.serving.command.serve)

Routes (JSON in and out; a bad request gets a 4xx and `{"error": "<one line>"}`, a failure while scoring a 500 and
the same):

- `POST /get_reward`, OpenRLHF's remote-RM protocol (`--reward.remote_url http://host:port/get_reward`): `query` (each
  sample's prompt and response as one text), `prompts`, optional `labels` (the dataset's label column, e.g. the ground
  truth: given to the RMs as each prompt's reference) and `datasources` (data labels; `protocol.OpenRLHFRequest`).
  Answers `rewards` and `scores` (the same values: 0.0 where no RM could judge a sample) and per-sample `extra_logs`
  (`routed_rm`, the RM's index in the pool, -1 for none or several; `rewarded`, 1 where an RM judged it).
- `POST /score`, the general route (verl's batch reward function calls it; see `docs/guides/serving.md`):
  `prompts` and `completions`, one per completion, optional `domains` (data labels), `references` and `sources`.
  Answers `rewards` (null where no RM could judge), `rm` (the RM's name per completion), `group` (each completion's
  prompt group, groups in order of first appearance), `cost` of the call and a `routing_id`.
- `POST /feedback`: `routing_id` and `losses`, the trainer's loss per prompt group of that request (lower is better,
  as a DPO loss; null for a group not trained on): the router learns from them (`Router.observe`), as it does from the
  DPO losses in `OnlineDPOModule`. The routings of the last `feedback_window` requests are kept; each is learned from
  once. A router without online updates learns nothing.
- `GET /health`: the pool and router; `GET /stats`: requests, groups, completions and cost per RM so far.

Concurrent requests are coalesced: while one batch is scored, the requests that arrive wait, and the next batch takes
all of them (up to `max_batch_groups` groups), so the pool scores full batches on its device. Each request's prompt
groups stay its own, and each is routed to one RM (`rmrouter.serving.scorer`). The router routes from its prior or
lookup and from whatever `/feedback` has taught it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rmrouter.routers.base import Routing
from rmrouter.serving.groups import CompletionGroups
from rmrouter.serving.protocol import FeedbackRequest, OpenRLHFRequest, Refused, ScoreRequest, read_json
from rmrouter.serving.scorer import GroupRewards, RoutedScorer, call_cost, calls_per_rm, routing_part

log = logging.getLogger(__name__)


@dataclass
class Pending:
    groups: CompletionGroups
    done: asyncio.Future


class Batcher:
    """Scores the groups of concurrent requests together, one batch at a time, in a worker thread."""

    def __init__(self, scorer: RoutedScorer, max_batch_groups: int, wait_s: float) -> None:
        self.scorer, self.max_batch_groups, self.wait_s = scorer, max_batch_groups, wait_s
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.carried: Pending | None = None  # a request that did not fit the last batch: the next one starts with it
        self.batches = 0

    async def submit(self, groups: CompletionGroups) -> GroupRewards:
        pending = Pending(groups, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.done

    async def run(self) -> None:
        while True:
            batch = [self.carried or await self.queue.get()]
            self.carried = None
            if self.wait_s > 0:
                await asyncio.sleep(self.wait_s)  # let the requests arriving together join this batch
            size = len(batch[0].groups)
            while not self.queue.empty():
                pending = self.queue.get_nowait()
                if size + len(pending.groups) > self.max_batch_groups:
                    self.carried = pending
                    break
                batch.append(pending)
                size += len(pending.groups)
            try:
                merged = CompletionGroups.concat([p.groups for p in batch])
                scored = await asyncio.to_thread(self.scorer.score, merged)
                self.batches += 1
                parts = split_rewards(scored, [p.groups for p in batch], self.scorer)
                for pending, part in zip(batch, parts, strict=True):
                    if not pending.done.done():  # a client that went away has cancelled its future
                        pending.done.set_result(part)
            except Exception as error:  # every request of the batch fails with it; the server keeps serving
                log.exception("scoring a batch of %d requests failed", len(batch))
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(error)


def split_rewards(scored: GroupRewards, parts: list[CompletionGroups], scorer: RoutedScorer) -> list[GroupRewards]:
    """Each request's share of a merged batch's rewards: its completions, its groups' RMs, its calls and cost."""
    out, flat, first_group = [], 0, 0
    for part in parts:
        groups = slice(first_group, first_group + len(part))
        calls = calls_per_rm(scorer.pool, part, scored.asked[groups])
        rewards = scored.rewards[flat : flat + part.size]
        routing = None if scored.routing is None else routing_part(scored.routing, groups)
        out.append(GroupRewards(rewards, scored.rm_index[groups], scored.asked[groups], calls,
                                call_cost(scorer.pool, calls), routing=routing))  # fmt: skip
        flat += part.size
        first_group += len(part)
    return out


def per_completion(part: CompletionGroups, rm_index: torch.Tensor) -> list[int]:
    """Each completion's group's RM index, in the request's flat order."""
    index = [-1] * part.size
    for rm, rows in zip(rm_index.tolist(), part.rows, strict=True):
        for row in rows:
            index[row] = rm
    return index


def build_app(scorer: RoutedScorer, max_request_bytes: int = 4 << 20, max_batch_groups: int = 64,
              batch_wait_ms: float = 2.0, feedback_window: int = 1024):  # fmt: skip
    """The FastAPI app serving `scorer` (see the module docstring); the routings of the last `feedback_window`
    `/score` requests are kept for `/feedback`."""
    batcher = Batcher(scorer, max_batch_groups, batch_wait_ms / 1000)
    stats = {"requests": 0, "completions": 0}
    routings: OrderedDict[str, Routing] = OrderedDict()  # routing id -> the router's decision, oldest first

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()  # shutdown: the loop stops taking batches; uvicorn has already drained the requests
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(title="rmrouter reward server", lifespan=lifespan)

    async def scored(request: Request, model: type[BaseModel]) -> tuple[Any, CompletionGroups, GroupRewards]:
        payload = await read_json(request, model, max_request_bytes)
        groups = payload.groups()
        try:
            result = await batcher.submit(groups)
        except Exception as error:  # logged with its traceback by the batcher; the client gets one line
            raise Refused(500, f"scoring failed: {type(error).__name__}: {error}".splitlines()[0]) from None
        stats["requests"] += 1
        stats["completions"] += groups.size
        return payload, groups, result

    @app.exception_handler(Refused)
    async def bad_request(request: Request, error: Refused):
        return JSONResponse({"error": error.reason}, status_code=error.status)

    @app.post("/get_reward")
    async def get_reward(request: Request):
        _, groups, result = await scored(request, OpenRLHFRequest)
        rewards = [0.0 if r is None else r for r in result.rewards]
        return {"rewards": rewards, "scores": rewards,
                "extra_logs": {"routed_rm": per_completion(groups, result.rm_index),
                               "rewarded": [int(r is not None) for r in result.rewards]}}  # fmt: skip

    @app.post("/score")
    async def score(request: Request):
        _, groups, result = await scored(request, ScoreRequest)
        routed = [scorer.pool.names[n] if n >= 0 else None for n in per_completion(groups, result.rm_index)]
        routing_id = uuid.uuid4().hex
        routings[routing_id] = result.routing
        while len(routings) > feedback_window:
            routings.popitem(last=False)
        group = per_completion(groups, torch.arange(len(groups)))
        return {"rewards": result.rewards, "rm": routed, "cost": result.cost, "group": group,
                "routing_id": routing_id}  # fmt: skip

    @app.post("/feedback")
    async def feedback(request: Request):
        payload = await read_json(request, FeedbackRequest, max_request_bytes)
        routing = routings.pop(payload.routing_id, None)
        if routing is None:
            raise Refused(404, f"no routing {payload.routing_id!r}: unknown, already learned from, or older than the "
                               f"last {feedback_window} requests")  # fmt: skip
        try:
            learned = await asyncio.to_thread(scorer.learn, routing, payload.losses)
        except ValueError as error:
            routings[payload.routing_id] = routing  # a malformed report does not use the routing up
            raise Refused(422, f"losses: {error}") from None
        return {"learned": learned}

    @app.get("/health")
    async def health():
        return {"status": "ok", "reward_models": scorer.pool.names, "router": type(scorer.router).__name__}

    @app.get("/stats")
    async def statistics():
        return {**stats, "batches": batcher.batches, "groups": scorer.groups_routed, "calls": scorer.calls,
                "cost_total": scorer.cost_total if scorer.pool.costs is not None else None,
                "groups_learned": scorer.groups_learned}  # fmt: skip

    return app


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server started next."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class BackgroundServer:
    """Serves an app with uvicorn in a background thread until `stop` (for notebooks, tests and benchmarks; a
    deployment runs `python cli.py serve`).

    Args:
        app: The app (`build_app`).
        host: The interface.
        port: The port; 0 takes a free one.
        timeout: Seconds to wait for the server to start.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> None:
        import threading
        import time

        import uvicorn

        port = port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the reward server did not start on {host}:{port}")
            time.sleep(0.02)
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        """Asks uvicorn to finish the requests in flight and stop, and waits for it."""
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
