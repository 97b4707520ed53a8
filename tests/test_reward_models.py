"""Reward models on tiny random-init models: shapes, batching invariance, exact values, abstention, parsing."""

from __future__ import annotations

import math

import pytest
import torch

from rmrouter.reward_models import (
    GSM8KVerifierRewardModel,
    LengthRewardModel,
    LikelihoodRewardModel,
    ReferenceSimilarityRewardModel,
    SequenceClassifierRewardModel,
    final_number,
)

PROMPTS = [
    "How much does Janet make?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"}],
    "Hi",
    "What is 9 * 2? Show the working and the final answer in a long and detailed way, please.",
    "Why?",
]
RESPONSES = [
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day and makes 9 * 2 = 18 dollars. #### 18",
    "Mix flour, water, salt and yeast, then bake it.",
    "",
    "9 * 2 = 18. " * 12,
    "Because.",
]
REFERENCES = ["#### 18", "Mix flour and water, then bake.", "Hello there.", "#### 18", "The quick brown fox."]


@pytest.fixture(scope="module")
def likelihood_rm(tiny_causal_lm_dir):
    return LikelihoodRewardModel("likelihood", model=tiny_causal_lm_dir, batch_size=2, max_length=256)


@pytest.fixture(scope="module")
def classifier_rm(tiny_classifier_dir):
    return SequenceClassifierRewardModel("classifier", model=tiny_classifier_dir, batch_size=2, max_length=256)


@pytest.fixture(scope="module")
def similarity_rm(tiny_encoder_dir):
    return ReferenceSimilarityRewardModel("similarity", model=tiny_encoder_dir, batch_size=2, max_length=256)


@pytest.fixture(params=["likelihood_rm", "classifier_rm", "similarity_rm"])
def model_rm(request):
    return request.getfixturevalue(request.param)


def test_model_rms_score_finite_floats(model_rm):
    scores = model_rm.score(PROMPTS, RESPONSES, REFERENCES)
    assert scores.shape == (len(RESPONSES),) and scores.dtype == torch.float32
    finite = torch.isfinite(scores)
    # An empty response leaves the likelihood RM the end-of-turn token to score, so every row has a value.
    assert finite.all(), scores


def test_model_rms_are_batching_invariant(model_rm):
    batched = model_rm.score(PROMPTS, RESPONSES, REFERENCES)
    alone = torch.cat(
        [model_rm.score([p], [r], [ref]) for p, r, ref in zip(PROMPTS, RESPONSES, REFERENCES, strict=True)]
    )
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_model_rms_freeze_their_weights(model_rm):
    assert not any(parameter.requires_grad for parameter in model_rm.parameters())


def test_wrong_lengths_raise(model_rm):
    with pytest.raises(ValueError, match="prompts"):
        model_rm.score(PROMPTS, RESPONSES[:2], REFERENCES)
    with pytest.raises(ValueError, match="references"):
        model_rm.score(PROMPTS, RESPONSES, REFERENCES[:2])


def test_likelihood_equals_hand_computation(likelihood_rm, tiny_tokenizer):
    messages = [{"role": "user", "content": "How much does Janet make?"}]
    response = "She makes 18 dollars."
    context = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    context_ids = tiny_tokenizer(context, add_special_tokens=False)["input_ids"]
    scored_ids = tiny_tokenizer(response + "</s>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + scored_ids])
    logp = likelihood_rm.model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    token_logp = logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
    expected = token_logp[len(context_ids) - 1 :].mean()
    assert likelihood_rm.score([messages], [response]).item() == pytest.approx(expected.item(), abs=1e-5)


def test_likelihood_shared_prompts_score_as_whole_rows(tiny_causal_lm_dir):
    """The prompt cache (share_prompts) against whole rows (the default), on both sides of pairs as a pool scores
    them: each prompt twice, of very different lengths, with batches that would otherwise split a pair."""
    shared = LikelihoodRewardModel("shared", model=tiny_causal_lm_dir, batch_size=3, max_length=256, share_prompts=True)
    whole = LikelihoodRewardModel("whole", model=tiny_causal_lm_dir, batch_size=3, max_length=256)
    prompts, responses = PROMPTS + PROMPTS, RESPONSES + RESPONSES[::-1]
    ours, theirs = shared.score(prompts, responses), whole.score(prompts, responses)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_length_sorted_groups_never_split_a_group():
    from rmrouter.reward_models._hf import length_sorted_groups

    batches = list(length_sorted_groups([[0, 1], [2, 3], [4], [5, 6, 7, 8], [9]], batch_size=3))
    assert batches == [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9]]


def test_likelihood_scores_exactly_the_response_and_end_of_turn(likelihood_rm, tiny_tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    context_ids, scored_ids = likelihood_rm.encode(messages, "Mix flour and bake.")
    assert tiny_tokenizer.decode(context_ids) == "<|user|>Hi</s><|assistant|>"
    assert tiny_tokenizer.decode(scored_ids) == "Mix flour and bake.</s>"
    short, longer = likelihood_rm.score([messages] * 2, ["Mix flour and bake.", "Mix flour and bake. Then eat it."])
    assert short != longer


def test_likelihood_truncates_the_prompt_from_the_left(tiny_causal_lm_dir):
    rm = LikelihoodRewardModel("short", model=tiny_causal_lm_dir, batch_size=2, max_length=24)
    context_ids, scored_ids = rm.encode([{"role": "user", "content": "The quick brown fox " * 20}], "Bake it.")
    assert len(context_ids) + len(scored_ids) == 24
    assert rm.tokenizer.decode(scored_ids) == "Bake it.</s>"
    assert rm.tokenizer.decode(context_ids).endswith("<|assistant|>")
    assert torch.isfinite(rm.score(["The quick brown fox " * 20], ["Bake it."])).all()


def test_classifier_equals_logit_on_chat_template_text(classifier_rm, tiny_tokenizer):
    messages = [{"role": "user", "content": "How do I bake bread?"}]
    response = "Mix flour, water, salt and yeast, then bake it."
    text = tiny_tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    assert classifier_rm.conversation_text(messages, response) == text
    logit = classifier_rm.model(**tiny_tokenizer(text, return_tensors="pt")).logits[0, 0]
    assert classifier_rm.score([messages], [response]).item() == pytest.approx(logit.item(), abs=1e-5)


def test_classifier_truncation_keeps_the_response_end(tiny_classifier_dir):
    rm = SequenceClassifierRewardModel("short", model=tiny_classifier_dir, batch_size=2, max_length=16)
    text = rm.conversation_text([{"role": "user", "content": "The quick brown fox " * 20}], "Bake it.")
    ids = rm.tokenizer(text, truncation=True, max_length=rm.max_length)["input_ids"]
    assert len(ids) == 16 and rm.tokenizer.decode(ids).endswith("Bake it.</s>")


def test_similarity_is_one_for_identical_text_and_abstains_without_reference(similarity_rm):
    scores = similarity_rm.score(
        ["q", "q", "q"], ["Bake the bread.", "Bake the bread.", "18"], [None, "Bake the bread.", "#### 18"]
    )
    assert math.isnan(scores[0])
    assert scores[1].item() == pytest.approx(1.0, abs=1e-5)
    assert torch.isfinite(scores[2]) and -1.0 - 1e-5 <= scores[2].item() <= 1.0 + 1e-5


def test_similarity_embeddings_are_unit_length(similarity_rm):
    embeddings = similarity_rm.embed(["a", "The quick brown fox jumps over the lazy dog."])
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
        ("The total is 1234 dollars.\n#### 1,234", "1234"),
        ("She has 16 - 3 = <<16-3=13>>13 eggs left\nShe makes 13 * 2 = $<<13*2=26>>26\nA: 26", "26"),
        ("It takes 2 x 0.5 = <<2*0.5=1.0>>1.0 bolts.\nSo it takes 3.0 bolts in total.\nA: 3", "3"),
        ("The answer is $18.00.", "18"),
        ("So the answer is: 1,000,000 people", "1000000"),
        ("The temperature fell to -5 degrees.", "-5"),
        ("Each costs $0.50, so 3 cost $1.5.", "1.5"),
        ("16-3=13", "13"),
        ("Therefore \\boxed{42}.", "42"),
        ("I do not know.", None),
    ],
)
def test_final_number(text, expected):
    assert final_number(text) == expected


def test_verifier_scores_matches_and_abstains():
    rm = GSM8KVerifierRewardModel("gsm8k")
    responses = ["... A: 18", "... A: 26", "I cannot solve this.", "... so $18.00 a day.", "A: 18", "A: 18"]
    references = ["#### 18", "#### 18", "#### 18", "#### 18", "no number here", None]
    scores = rm.score(["q"] * 6, responses, references)
    assert scores[:4].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert math.isnan(scores[4]) and math.isnan(scores[5])


@pytest.mark.parametrize(("unit", "expected"), [("characters", [11.0, 0.0, 9.0]), ("words", [2.0, 0.0, 2.0])])
def test_length(unit, expected):
    rm = LengthRewardModel("length", unit=unit)
    assert rm.score(["q"] * 3, ["hello world", "", "  a\nbcdef"]).tolist() == expected


def test_length_rejects_unknown_unit():
    with pytest.raises(ValueError, match="unit"):
        LengthRewardModel("length", unit="tokens")


def test_model_rm_rejects_bad_sizes_and_dtypes(tiny_classifier_dir):
    with pytest.raises(ValueError, match="batch_size"):
        SequenceClassifierRewardModel("c", model=tiny_classifier_dir, batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        SequenceClassifierRewardModel("c", model=tiny_classifier_dir, dtype="bfloat")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_bfloat16_if_native_follows_the_machine(tiny_causal_lm_dir, monkeypatch, native, expected):
    from rmrouter.reward_models import _hf

    monkeypatch.setattr(_hf, "native_bfloat16", lambda: native)
    assert _hf.dtype_kwargs("bfloat16_if_native") == {"dtype": expected}
    rm = LikelihoodRewardModel("lik", tiny_causal_lm_dir, dtype="bfloat16_if_native")
    assert next(rm.model.parameters()).dtype == expected
