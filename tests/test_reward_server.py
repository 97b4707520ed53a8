"""The reward server over real HTTP on localhost: rewards, concurrent requests, bad payloads, size limits, shutdown."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving_helpers import label_router, letter_pool

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

from rmrouter.serving.protocol import OpenRLHFRequest, response_of  # noqa: E402
from rmrouter.serving.scorer import RoutedScorer  # noqa: E402
from rmrouter.serving.server import BackgroundServer, build_app, free_port  # noqa: E402


@pytest.fixture
def server():
    scorer = RoutedScorer(letter_pool(costs={"a": 1.0, "b": 2.0, "ref": 0.5}), label_router())
    running = BackgroundServer(build_app(scorer, max_request_bytes=2048, max_batch_groups=64, batch_wait_ms=20))
    running.scorer = scorer
    yield running
    running.stop()


def test_the_score_route_routes_each_prompt_group_and_says_to_which_rm(server):
    payload = {"prompts": ["p", "p", "q", "q", "r"], "completions": ["aa", "a", "bbb", "b", "42"],
               "domains": ["a-task", "a-task", "b-task", "b-task", "exact"],
               "references": [None, None, None, None, "42"]}  # fmt: skip
    answer = requests.post(f"{server.url}/score", json=payload, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["rewards"] == [2.0, 1.0, 3.0, 1.0, 1.0]
    assert body["rm"] == ["a", "a", "b", "b", "ref"]
    assert body["cost"] == pytest.approx(2 / 2 * 1.0 + 2 / 2 * 2.0 + 1 / 2 * 0.5)


def test_the_openrlhf_route_speaks_its_remote_rm_protocol(server):
    prompts = ["Q: how many a? A:", "Q: how many a? A:", "Q: say 7. A:"]
    payload = {"query": [prompts[0] + " aaa", prompts[1] + " a", prompts[2] + " 7"], "prompts": prompts,
               "labels": [None, None, "7"]}  # fmt: skip
    body = requests.post(f"{server.url}/get_reward", json=payload, timeout=10).json()
    # no data label: routing by the overall ranking (RM a first), each scoring what follows the prompt
    assert body["rewards"] == body["scores"] == [3.0, 1.0, 0.0]
    assert body["extra_logs"] == {"routed_rm": [0, 0, 0], "rewarded": [1, 1, 1]}
    # the labels (OpenRLHF's label column, e.g. the ground truth) are each prompt's reference
    groups = OpenRLHFRequest(**payload).groups()
    assert groups.references == [None, "7"] and groups.completions == [[" aaa", " a"], [" 7"]]
    assert response_of("<s>Q: x A: y", "Q: x A:") == " y" and response_of("other", "Q:") == "other"
    # its other versions: `datasources` are the data labels; without `prompts` each query is a group of its own
    labelled = OpenRLHFRequest(query=["Q: a? A: aa", "Q: b? A: bb"], prompts=["Q: a? A:", "Q: b? A:"],
                               datasources=["a-task", "b-task"], metas=[{}, {}]).groups()  # fmt: skip
    assert labelled.domains == ["a-task", "b-task"]
    alone = OpenRLHFRequest(query=["aa", "aab"]).groups()
    assert alone.completions == [["aa"], ["aab"]] and len(alone) == 2
    body = requests.post(f"{server.url}/get_reward", json={"query": ["Q: b? A: bbb"], "prompts": ["Q: b? A:"],
                                                           "datasources": ["b-task"]}, timeout=10).json()  # fmt: skip
    assert body["rewards"] == [3.0] and body["extra_logs"]["routed_rm"] == [1]


def test_concurrent_requests_are_scored_together_and_each_gets_its_own_answer(server):
    def ask(i: int) -> tuple[int, dict]:
        payload = {"prompts": [f"p{i}"] * 2, "completions": ["a" * i, "b" * i], "domains": ["a-task"] * 2}
        return i, requests.post(f"{server.url}/score", json=payload, timeout=30).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(1, 17)))
    for i, body in answers:
        assert body["rewards"] == [float(i), 0.0] and body["rm"] == ["a", "a"]
    stats = requests.get(f"{server.url}/stats", timeout=10).json()
    assert stats["requests"] == 16 and stats["groups"] == 16 and stats["calls"]["a"] == 32
    assert stats["batches"] < 16  # requests that arrived together shared a batch
    assert stats["cost_total"] == pytest.approx(16 * 1.0)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "the body is not JSON"),
        (json.dumps({"prompts": ["p"]}).encode(), 422, "completions: Field required"),
        (json.dumps({"prompts": ["p", "q"], "completions": ["a"]}).encode(), 422, "prompts has 2 entries for 1"),
        (json.dumps({"prompts": [], "completions": []}).encode(), 422, "completions is empty"),
        (json.dumps({"prompts": ["p"], "completions": ["a"], "extra": 1}).encode(), 422, "extra: Extra inputs"),
        (json.dumps({"prompts": ["p"], "completions": ["a" * 4096]}).encode(), 413, "over the limit of 2048"),
    ],
)
def test_a_bad_request_gets_a_4xx_and_a_one_line_reason(server, body, status, reason):
    answer = requests.post(f"{server.url}/score", data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert reason in error and "\n" not in error
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"  # and it keeps serving


def test_a_body_over_the_limit_without_a_declared_length_is_refused_too(server):
    def chunks():
        yield b'{"prompts": ["p"], "completions": ["'
        for _ in range(8):
            yield b"a" * 512
        yield b'"]}'

    answer = requests.post(f"{server.url}/score", data=chunks(), timeout=10)  # chunked: no Content-Length
    assert answer.status_code == 413 and "over the limit" in answer.json()["error"]


def test_health_names_the_pool_and_router_and_the_server_shuts_down_cleanly(server):
    assert requests.get(f"{server.url}/health", timeout=10).json() == {
        "status": "ok", "reward_models": ["a", "b", "ref"], "router": "DataLabelRouter"}  # fmt: skip
    server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=2)


@pytest.mark.slow
def test_cli_serve_starts_from_a_config_serves_and_stops_cleanly_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    port = free_port()
    config = {
        "pool": {"class_path": "rmrouter.reward_models.RewardModelPool",
                 "init_args": {"reward_models": [{"class_path": "rmrouter.reward_models.LengthRewardModel",
                                                  "init_args": {"name": "length", "unit": "characters"}}],
                               "costs": {"length": 0.5}}},
        "router": {"class_path": "rmrouter.routers.baseline_routers.SingleRMRouter", "init_args": {"rm": "length"}},
        "port": port,
    }  # fmt: skip
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, str(root / "cli.py"), "serve", "--config", str(tmp_path / "serve.yaml")]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/health", timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.2)
        body = requests.post(f"{url}/score", json={"prompts": ["p", "p"], "completions": ["abc", "a"]}, timeout=10)
        assert {key: body.json()[key] for key in ("rewards", "rm", "cost")} == {
            "rewards": [3.0, 1.0], "rm": ["length", "length"], "cost": 0.5}  # fmt: skip
        process.send_signal(signal.SIGTERM)
        # uvicorn drains, runs the app's shutdown, then re-raises the signal it caught (exit by SIGTERM, as asked)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stdout.read()
    assert "Application shutdown complete" in log and "Traceback" not in log


def test_a_failure_while_scoring_is_a_500_with_one_line_and_the_server_keeps_serving():
    router = label_router()
    real_label = router.label
    calls = []

    def flaky(pairs, judge):
        calls.append(len(pairs))
        if len(calls) == 1:
            raise RuntimeError("router broke\nsecond line")
        return real_label(pairs, judge)

    router.label = flaky
    with BackgroundServer(build_app(RoutedScorer(letter_pool(), router))) as running:
        payload = {"prompts": ["p", "p"], "completions": ["aa", "a"], "domains": ["a-task"] * 2}
        failed = requests.post(f"{running.url}/score", json=payload, timeout=10)
        assert failed.status_code == 500 and failed.json() == {"error": "scoring failed: RuntimeError: router broke"}
        assert requests.post(f"{running.url}/score", json=payload, timeout=10).json()["rewards"] == [2.0, 1.0]


def test_a_request_whose_client_went_away_does_not_fail_the_others_in_its_batch():
    import asyncio

    from rmrouter.serving.groups import CompletionGroups
    from rmrouter.serving.server import Batcher

    async def scenario():
        batcher = Batcher(RoutedScorer(letter_pool(), label_router()), max_batch_groups=64, wait_s=0.05)
        worker = asyncio.create_task(batcher.run())
        gone = asyncio.create_task(batcher.submit(CompletionGroups.of(["p"], ["a"], domains=["a-task"])))
        kept = asyncio.create_task(batcher.submit(CompletionGroups.of(["q", "q"], ["aa", "a"], domains=["a-task"] * 2)))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client disconnects while its batch waits to be scored
        result = await kept
        worker.cancel()
        return result, batcher.batches

    result, batches = asyncio.run(scenario())
    assert result.rewards == [2.0, 1.0] and batches == 1


def test_feedback_teaches_the_router_the_losses_of_an_earlier_routing_once(tmp_path):
    import torch
    from letter_rms import LetterCount
    from test_task_bayesian import hand_prior

    from rmrouter.reward_models import RewardModelPool
    from rmrouter.routers.task_bayesian import TaskBayesianRouter

    router = TaskBayesianRouter(None, hand_prior(tmp_path / "prior.pt"), sigma2=1.0, lambda0=25.0, warmup=1, seed=0,
                                warmup_rewards="placeholder")  # fmt: skip
    scorer = RoutedScorer(RewardModelPool([LetterCount("a", "a"), LetterCount("b", "b")]), router)
    before = router.posteriors.precision.clone()
    with BackgroundServer(build_app(scorer, feedback_window=2)) as running:
        payload = {"prompts": ["p", "p", "q", "q"], "completions": ["aa", "a", "b", "bb"],
                   "domains": ["math", "math", "chat", "chat"]}  # fmt: skip
        body = requests.post(f"{running.url}/score", json=payload, timeout=10).json()
        assert body["group"] == [0, 0, 1, 1] and body["rm"] == ["a", "a", "b", "b"]
        post = lambda report: requests.post(f"{running.url}/feedback", json=report, timeout=10)  # noqa: E731
        short = post({"routing_id": body["routing_id"], "losses": [0.3]})
        assert short.status_code == 422 and "got 1 losses for 2 prompt groups" in short.json()["error"]
        assert torch.equal(router.posteriors.precision, before)  # nothing learned from a malformed report
        answer = post({"routing_id": body["routing_id"], "losses": [0.2, None]})
        assert answer.status_code == 200 and answer.json() == {"learned": 1}
        moved = (router.posteriors.precision - before).abs().sum(dim=(1, 2))
        assert moved[0] > 0 and moved[1] == 0  # RM a, whose math group was trained on, alone
        again = post({"routing_id": body["routing_id"], "losses": [0.2, None]})
        assert again.status_code == 404 and "already learned from" in again.json()["error"]
        oldest = requests.post(f"{running.url}/score", json=payload, timeout=10).json()["routing_id"]
        for _ in range(2):  # only the last two routings are kept
            requests.post(f"{running.url}/score", json=payload, timeout=10)
        assert post({"routing_id": oldest, "losses": [0.1, 0.1]}).status_code == 404
        assert requests.get(f"{running.url}/stats", timeout=10).json()["groups_learned"] == 1
