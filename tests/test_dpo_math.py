"""Online DPO math against hand-computed numbers: response log-probs, DPO/IPO losses, implicit KL, pair rules."""

from __future__ import annotations

import math

import pytest
import torch

from rmrouter.dpo import dpo_loss, dpo_loss_of_finite_pairs, implicit_kl, response_logprobs

NAN, INF = float("nan"), float("inf")


def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


# Row 0: prompt at 0-1, response at 2-3. Row 1: prompt at 0, response at 1-2, right padding at 3.
INPUT_IDS = torch.tensor([[0, 1, 2, 1], [1, 0, 2, 0]])
RESPONSE_MASK = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
LOGITS = torch.tensor(
    [
        [[1.0, 2.0, 0.0], [0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [5.0, 5.0, 5.0]],
        [[0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [64.0, -64.0, 0.0], [5.0, 5.0, 5.0]],
    ]
)
# logits[b, t-1] scores token t; only response tokens count.
ROW0 = [2.0 - lse(0.0, 1.0, 2.0), 0.0 - lse(3.0, 0.0, 0.0)]
ROW1 = [0.0 - lse(0.0, 0.0, 0.0), -1.0 - lse(1.0, 0.0, -1.0)]


def test_response_logprobs_sum_and_mean_match_hand_computed_values():
    summed = response_logprobs(LOGITS, INPUT_IDS, RESPONSE_MASK)
    assert summed.shape == (2,) and summed.dtype == torch.float32
    torch.testing.assert_close(summed, torch.tensor([sum(ROW0), sum(ROW1)]))
    mean = response_logprobs(LOGITS, INPUT_IDS, RESPONSE_MASK.bool(), average=True)
    torch.testing.assert_close(mean, torch.tensor([sum(ROW0) / 2, sum(ROW1) / 2]))


def test_response_logprobs_gradient_reaches_only_the_positions_that_predict_response_tokens():
    logits = LOGITS.clone().requires_grad_(True)
    response_logprobs(logits, INPUT_IDS, RESPONSE_MASK).sum().backward()
    touched = logits.grad.abs().sum(dim=-1) > 0
    assert touched.tolist() == [[False, True, True, False], [True, True, False, False]]


def test_non_finite_logits_at_masked_positions_do_not_reach_the_result():
    logits = LOGITS.clone()
    logits[1, 2] = NAN  # predicts the pad token
    logits[0, 0] = INF  # predicts a prompt token
    torch.testing.assert_close(
        response_logprobs(logits, INPUT_IDS, RESPONSE_MASK), torch.tensor([sum(ROW0), sum(ROW1)])
    )


def test_bf16_logits_are_reduced_in_float32():
    # Every value here is exact in bf16, so a float32 reduction must give the float32 answer exactly.
    exact = response_logprobs(LOGITS.bfloat16(), INPUT_IDS, RESPONSE_MASK)
    assert exact.dtype == torch.float32
    torch.testing.assert_close(exact, response_logprobs(LOGITS, INPUT_IDS, RESPONSE_MASK), rtol=0, atol=1e-6)
    # Large logits: exp(1024) overflows even float32, so only a max-shifted (logsumexp) reduction survives.
    logits = torch.zeros(1, 3, 3, dtype=torch.bfloat16)
    logits[0, 1] = torch.tensor([1024.0, 0.0, -1024.0])
    ids, mask = torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 1]])
    out = response_logprobs(logits, ids, mask)
    torch.testing.assert_close(out, torch.tensor([-math.log(3.0) - 1024.0]))


def test_response_logprobs_refuses_bad_masks_and_shapes():
    with pytest.raises(ValueError, match="position 0"):
        response_logprobs(LOGITS, INPUT_IDS, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"rows \[1\] have no response token"):
        response_logprobs(LOGITS, INPUT_IDS, torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="must agree"):
        response_logprobs(LOGITS, INPUT_IDS[:, :3], RESPONSE_MASK[:, :3])
    with pytest.raises(ValueError, match=r"\[batch, time, vocab\]"):
        response_logprobs(LOGITS[0], INPUT_IDS, RESPONSE_MASK)


# Pair 0 prefers chosen more than the reference does (logits = 2), pair 1 less (logits = -2).
POLICY_CHOSEN = torch.tensor([-10.0, -12.0])
POLICY_REJECTED = torch.tensor([-12.0, -10.0])
REFERENCE = torch.tensor([-11.0, -11.0])


def test_sigmoid_loss_rewards_margins_and_accuracies_match_hand_computed_values():
    out = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REFERENCE, REFERENCE, beta=0.1, loss_type="sigmoid")
    # -log sigmoid(0.1 * 2) = log(1 + e^-0.2); -log sigmoid(-0.2) = log(1 + e^0.2).
    torch.testing.assert_close(out.losses, torch.tensor([math.log1p(math.exp(-0.2)), math.log1p(math.exp(0.2))]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.1, -0.1]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.1, 0.1]))
    torch.testing.assert_close(out.reward_margins, torch.tensor([0.2, -0.2]))
    assert out.reward_accuracies.tolist() == [1.0, 0.0]


def test_ipo_loss_matches_the_squared_distance_to_one_over_two_beta():
    out = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REFERENCE, REFERENCE, beta=0.1, loss_type="ipo")
    torch.testing.assert_close(out.losses, torch.tensor([(2.0 - 5.0) ** 2, (-2.0 - 5.0) ** 2]))
    torch.testing.assert_close(out.reward_margins, torch.tensor([0.2, -0.2]))


def test_policy_equal_to_reference_gives_log_2_and_zero_rewards_counted_as_misses():
    logps = torch.tensor([-3.0, -40.0, -7.5])
    other = torch.tensor([-5.0, -1.0, -7.5])
    out = dpo_loss(logps, other, logps, other, beta=0.5, loss_type="sigmoid")
    torch.testing.assert_close(out.losses, torch.full((3,), math.log(2.0)))
    assert out.reward_margins.tolist() == [0.0, 0.0, 0.0] and out.reward_accuracies.tolist() == [0.0, 0.0, 0.0]
    ipo = dpo_loss(logps, other, logps, other, beta=0.5, loss_type="ipo")
    torch.testing.assert_close(ipo.losses, torch.ones(3))  # (0 - 1/(2*0.5))^2


def test_large_margins_stay_finite_and_exact():
    out = dpo_loss(
        torch.tensor([0.0, -2000.0]), torch.tensor([-2000.0, 0.0]), torch.zeros(2), torch.zeros(2), 1.0, "sigmoid"
    )
    torch.testing.assert_close(out.losses, torch.tensor([0.0, 2000.0]))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_gradient_reaches_the_policy_only(loss_type):
    chosen, rejected = POLICY_CHOSEN.clone().requires_grad_(True), POLICY_REJECTED.clone().requires_grad_(True)
    ref_chosen, ref_rejected = REFERENCE.clone().requires_grad_(True), REFERENCE.clone().requires_grad_(True)
    out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, loss_type=loss_type)
    out.losses.sum().backward()
    assert ref_chosen.grad is None and ref_rejected.grad is None
    logits = torch.tensor([2.0, -2.0])
    if loss_type == "sigmoid":  # d/dlogits -log sigmoid(beta * logits) = -beta * sigmoid(-beta * logits)
        expected = -0.1 * torch.sigmoid(-0.1 * logits)
    else:
        expected = 2 * (logits - 5.0)
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)
    assert not any(t.requires_grad for t in (out.chosen_rewards, out.rejected_rewards, out.reward_margins))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_non_finite_inputs_give_nan_for_that_pair_only(loss_type):
    chosen = torch.tensor([-10.0, NAN, -10.0, -10.0])
    # -inf rejected would make the sigmoid loss a silent 0 if it were left to the arithmetic.
    rejected = torch.tensor([-12.0, -12.0, -INF, -12.0])
    reference = torch.tensor([-11.0, -11.0, -11.0, INF])
    out = dpo_loss(chosen, rejected, torch.full((4,), -11.0), reference, beta=0.1, loss_type=loss_type)
    alone = dpo_loss(chosen[:1], rejected[:1], torch.tensor([-11.0]), torch.tensor([-11.0]), 0.1, loss_type)
    assert out.losses[0] == alone.losses[0] and out.reward_accuracies[0] == 1.0
    for field in out:
        assert field[1:].isnan().all(), field
    assert torch.nanmean(out.losses) == alone.losses[0]


def test_empty_batch_gives_empty_outputs():
    empty = torch.zeros(0)
    out = dpo_loss(empty, empty, empty, empty, beta=0.1, loss_type="sigmoid")
    assert all(field.shape == (0,) for field in out)


def test_dpo_loss_refuses_bad_arguments():
    one = torch.zeros(1)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(one, torch.zeros(2), one, one, beta=0.1, loss_type="sigmoid")
    with pytest.raises(ValueError, match="1-D"):
        dpo_loss(*(torch.zeros(2, 2),) * 4, beta=0.1, loss_type="sigmoid")
    for beta in (0.0, -0.1, NAN, INF):
        with pytest.raises(ValueError, match="beta"):
            dpo_loss(one, one, one, one, beta=beta, loss_type="sigmoid")
    with pytest.raises(ValueError, match="hinge"):
        dpo_loss(one, one, one, one, beta=0.1, loss_type="hinge")  # type: ignore[arg-type]


def test_implicit_kl_is_the_detached_mean_log_ratio():
    policy = torch.tensor([-10.0, -20.0, -5.0], requires_grad=True)
    kl = implicit_kl(policy, torch.tensor([-12.0, -19.0, -5.0]))
    assert kl.item() == pytest.approx(1.0 / 3.0) and not kl.requires_grad
    assert implicit_kl(torch.tensor([NAN, 0.0]), torch.zeros(2)).isnan()
    with pytest.raises(ValueError, match="one shape"):
        implicit_kl(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="no responses"):
        implicit_kl(torch.zeros(0), torch.zeros(0))


def test_dpo_loss_of_finite_pairs_selects_them_before_the_loss_so_gradients_stay_finite():
    policy_chosen = torch.tensor([-1.0, float("nan"), -2.0, -3.0], requires_grad=True)
    policy_rejected = torch.tensor([-2.0, -1.0, -1.0, -3.5], requires_grad=True)
    reference_chosen = torch.tensor([-1.5, -1.0, float("inf"), -3.0])
    reference_rejected = torch.tensor([-1.5, -1.0, -1.0, -3.0])
    out, rows = dpo_loss_of_finite_pairs(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, 0.1, "sigmoid"
    )
    assert rows.tolist() == [0, 3]
    expected = dpo_loss(policy_chosen[[0, 3]], policy_rejected[[0, 3]], reference_chosen[[0, 3]],
                        reference_rejected[[0, 3]], 0.1, "sigmoid")  # fmt: skip
    torch.testing.assert_close(out.losses, expected.losses)
    out.losses.mean().backward()
    assert policy_chosen.grad.isfinite().all() and policy_chosen.grad[[1, 2]].eq(0).all()
    assert policy_rejected.grad.isfinite().all() and policy_rejected.grad[0] != 0
