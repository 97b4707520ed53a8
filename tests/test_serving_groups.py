"""Routing groups of completions (rmrouter.serving.groups) and the TRL reward function built on them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from serving_helpers import RMS, label_router, letter_pool

from rmrouter.routers.baseline_routers import MajorityVoteRouter
from rmrouter.serving import CompletionGroups, RoutedReward, RoutedScorer

ROOT = Path(__file__).resolve().parents[1]


def test_completions_are_grouped_by_prompt_in_order_of_first_appearance():
    prompts = ["p", "q", "p", [{"role": "user", "content": "r"}], "q"]
    completions = ["1", "2", "3", [{"role": "assistant", "content": "4"}], "5"]
    groups = CompletionGroups.of(prompts, completions, domains=["x", "y", "ignored", None, "y"])
    assert groups.completions == [["1", "3"], ["2", "5"], ["4"]]
    assert groups.rows == [[0, 2], [1, 4], [3]]
    assert groups.prompts[2] == [{"role": "user", "content": "r"}] and groups.prompts[0][0]["content"] == "p"
    assert groups.domains == ["x", "y", ""] and groups.size == 5
    pairs = groups.as_pairs()  # one pair per group for the router: its first two completions
    assert (pairs.first, pairs.second) == (["1", "2", "4"], ["3", "5", "4"])
    merged = CompletionGroups.concat([groups, CompletionGroups.of(["p"], ["6"])])
    assert len(merged) == 4 and merged.rows[3] == [5]  # the second part's prompt stays its own group
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        CompletionGroups.of(["p", "q"], ["1"])
    with pytest.raises(ValueError, match="1 domains for 2 completions"):
        CompletionGroups.of(["p", "q"], ["1", "2"], domains=["x"])


def test_each_group_is_scored_by_the_one_rm_its_label_routes_to():
    pool = letter_pool(costs={"a": 1.0, "b": 3.0, "ref": 0.5})
    scorer = RoutedScorer(pool, label_router())
    groups = CompletionGroups.of(
        ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4"],
        ["aab", "b", "aab", "b", "yes", "no", "aa", "a"],
        references=[None, None, None, None, "yes", "yes", None, None],
        domains=["a-task", "a-task", "b-task", "b-task", "exact", "exact", "exact", "exact"],
    )
    scored = scorer.score(groups)
    # p1 -> a (letter a counts), p2 -> b, p3 -> the reference RM, p4 -> exact without a reference: a
    assert scored.rm_index.tolist() == [0, 1, 2, 0]
    assert scored.rewards == [2.0, 0.0, 1.0, 1.0, 1.0, 0.0, 2.0, 1.0]
    # each RM scored only its groups' completions, once: a 4, b 2, ref 2; a pair is two completions
    assert scored.scored == {"a": 4, "b": 2, "ref": 2} and [rm.rows_scored for rm in pool.reward_models] == [4, 2, 2]
    assert scored.cost == pytest.approx(4 / 2 * 1.0 + 2 / 2 * 3.0 + 2 / 2 * 0.5)
    assert scorer.calls == {"a": 4, "b": 2, "ref": 2} and scorer.cost_total == pytest.approx(scored.cost)
    assert scorer.router.selections.tolist() == [2, 1, 1]  # the router's own counters, one pair per group


def test_an_rm_that_fails_leaves_its_groups_without_reward():
    pool = letter_pool()

    def broken(*args, **kwargs):
        raise RuntimeError("server down")

    pool[1]._score = broken
    scored = RoutedScorer(pool, label_router()).score(
        CompletionGroups.of(["p", "p", "q", "q"], ["a", "aa", "b", "bb"], domains=["a-task"] * 2 + ["b-task"] * 2)
    )
    assert scored.rewards == [1.0, 2.0, None, None] and scored.errors["b"] == 1


def test_an_ensemble_router_rewards_the_mean_of_every_rms_z_scores_in_the_group():
    pool = letter_pool()
    scored = RoutedScorer(pool, MajorityVoteRouter(None, seed=0)).score(
        CompletionGroups.of(["p"] * 3, ["a", "ab", "abb"])
    )
    assert scored.rm_index.tolist() == [-1] and scored.scored == {"a": 3, "b": 3, "ref": 0}
    # a: 1, 1, 1 (no spread: 0); b: 0, 1, 2 -> z = -1.22, 0, 1.22; ref abstains: the mean of a's and b's
    z = math.sqrt(1.5)
    expected = [(0.0 - z) / 2, 0.0, (0.0 + z) / 2]
    assert scored.rewards == pytest.approx(expected, rel=1e-6)
    assert expected[0] < 0 < expected[2] and expected[1] == 0


def test_the_trl_reward_function_reads_label_and_reference_columns_and_logs_shares():
    reward = RoutedReward(letter_pool(costs={"a": 1.0, "b": 1.0, "ref": 1.0}), label_router(), label_column="task",
                          reference_column="answer")  # fmt: skip
    logged: dict[str, float] = {}
    rewards = reward(
        prompts=["p", "p", "q", "q"],
        completions=[[{"role": "assistant", "content": "42"}], [{"role": "assistant", "content": "7"}], "bb", "b"],
        task=["exact", "exact", "b-task", "b-task"],
        answer=["42", "42", None, None],
        log_metric=lambda name, value: logged.__setitem__(name, value),
        trainer_state=object(),  # TRL passes its own keywords too
    )
    assert rewards == [1.0, 0.0, 2.0, 1.0]
    assert logged == {"routing/share/a": 0.0, "routing/share/b": 0.5, "routing/share/ref": 0.5,
                      "routing/rm_calls": 1.0, "routing/cost_per_completion": 0.5}  # fmt: skip
    assert reward.__name__ == "routed_reward" and set(RMS) == set(reward.scorer.pool.names)


def test_a_group_no_rm_can_judge_gets_no_reward_and_costs_nothing():
    from letter_rms import MatchesReference

    from rmrouter.reward_models import RewardModelPool
    from rmrouter.routers.baseline_routers import DataLabelRouter
    from rmrouter.routers.data_label import DataLabelRouting

    pool = RewardModelPool([MatchesReference("ref")], costs={"ref": 1.0})
    routing = DataLabelRouting.fit(["x"], ["s"], torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool))
    scored = RoutedScorer(pool, DataLabelRouter(routing=routing)).score(
        CompletionGroups.of(["p", "p", "q", "q"], ["4", "5", "4", "5"], references=["4", "4", None, None])
    )
    assert scored.rm_index.tolist() == [0, -1] and scored.asked == [[0], []]
    assert scored.rewards == [1.0, 0.0, None, None] and scored.scored == {"ref": 2} and scored.cost == 1.0


def test_a_serve_config_builds_the_reward_function_with_paths_relative_to_it(tmp_path, monkeypatch):
    import yaml

    pool = {"class_path": "rmrouter.reward_models.RewardModelPool",
            "init_args": {"reward_models": [{"class_path": "rmrouter.reward_models.LengthRewardModel",
                                             "init_args": {"name": "length", "unit": "characters"}}]}}  # fmt: skip
    (tmp_path / "pools").mkdir()
    (tmp_path / "pools" / "tiny.yaml").write_text(yaml.safe_dump(pool))
    config = {
        "pool": "pools/tiny.yaml",
        "port": 9000,
        "router": {"class_path": "rmrouter.routers.baseline_routers.SingleRMRouter", "init_args": {"rm": "length"}},
    }
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(ROOT)  # not the config's folder: its paths are read relative to the file
    reward = RoutedReward.from_config(tmp_path / "serve.yaml", label_column="task")
    assert reward.scorer.pool.names == ["length"] and reward.label_column == "task"
    assert reward(prompts=["p", "p"], completions=["abc", "a"]) == [3.0, 1.0]


def test_the_task_aware_router_routes_groups_by_label_from_its_prior_and_can_weigh_cost(tmp_path):
    from letter_rms import LetterCount
    from test_task_bayesian import hand_prior

    from rmrouter.reward_models import RewardModelPool
    from rmrouter.routers.task_bayesian import TaskBayesianRouter

    path = hand_prior(tmp_path / "prior.pt")  # RM a 90 % right on math, RM b 80 % on chat

    def routed(cost_weight: float) -> list[int]:
        pool = RewardModelPool([LetterCount("a", "a"), LetterCount("b", "b")], costs={"a": 1.0, "b": 0.0})
        router = TaskBayesianRouter(None, path, sigma2=1.0, lambda0=25.0, warmup=1, seed=0, online_updates=False,
                                    cost_weight=cost_weight)  # fmt: skip
        groups = CompletionGroups.of(["p", "p", "q", "q"], ["ab", "a", "ab", "b"], domains=["math"] * 2 + ["chat"] * 2)
        return RoutedScorer(pool, router).score(groups).rm_index.tolist()

    assert routed(0.0) == [0, 1]  # each task's most reliable RM
    assert routed(1.0) == [1, 1]  # RM a's 30-point lead on math is not worth its cost at lambda 1
