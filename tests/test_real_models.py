"""The reward models on the real packaged models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2); CPU, a minute at most.

The first run dequantises SmolLM2's GGUF into the user's rmrouter cache (about 30 s); later runs reuse it.
"""

from __future__ import annotations

import pytest
import torch

from rmrouter.reward_models import LikelihoodRewardModel, ReferenceSimilarityRewardModel

pytestmark = pytest.mark.real_models


@pytest.fixture(autouse=True)
def flush_denormals():
    """SmolLM2's activations produce denormal floats, which make CPU kernels about 2.5x slower; zero them here."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)  # PyTorch's default, and there is no getter to restore anything else


# Two GSM8K test questions with a correct and an incorrect real model solution each (example_model_solutions).
QUESTIONS = [
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends "
    "every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in "
    "dollars does she make every day at the farmers' market?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?",
]
CORRECT = [
    "Janet eats 3 duck eggs for breakfast and bakes 4 into muffins so 3 + 4 = <<3+4=7>>7 duck eggs are used\n"
    "Each day Janet's ducks lay 16 eggs and she uses 7, 16 - 7 = <<16-7=9>>9 duck eggs are for sale\n"
    "She sells her eggs for $2 per egg and has 9 available for sale so 2 * 9 = $<<2*9=18>>18 per day\nA: 18",
    "It takes 2/2=<<2/2=1>>1 bolt of white fiber\n"
    "So the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\nA: 3",
]
INCORRECT = [
    "Janet eats 3 ducks eggs for breakfast every morning and she sells the rest so she has 16 - 3 = <<16-3=13>>13 "
    "ducks eggs left\nShe has 13 ducks eggs and she sells 2 each day so she makes 13 * 2 = $<<13*2=26>>26\nA: 26",
    "It takes 2 bolts of blue fiber and half that much white fiber so it takes 2/2 = <<2/2=1.0>>1 bolt of white fiber"
    "\nSo it takes a total of 200+50 = <<200+50=250>>250 meters of fiber\nA: 250",
]


def test_likelihood_on_smollm2_scores_gsm8k_pairs():
    rm = LikelihoodRewardModel("smollm2-likelihood", model="smollm2-135m-instruct", batch_size=4)
    scores = rm.score(QUESTIONS * 2, CORRECT + INCORRECT)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    # A mean log-likelihood of a coherent answer from a 135M chat model: negative, and far from uniform (-10.8).
    assert (scores < 0).all() and (scores > -6).all(), scores
    # The longest and the shortest row, each alone, score as they did in the padded batch.
    alone = torch.cat([rm.score([QUESTIONS[0]], [CORRECT[0]]), rm.score([QUESTIONS[1]], [CORRECT[1]])])
    torch.testing.assert_close(scores[:2], alone, atol=1e-4, rtol=1e-4)


def test_similarity_on_minilm_ranks_a_paraphrase_first_and_matches_sentence_transformers():
    rm = ReferenceSimilarityRewardModel("minilm-similarity", model="all-minilm-l6-v2")
    reference = "Janet makes $18 every day by selling the 9 eggs she has left at the market."
    responses = [
        "Each day she sells her 9 remaining eggs at the farmers' market and earns 18 dollars.",
        "The robe needs three bolts of fiber in total.",
        "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    ]
    paraphrase, related, unrelated = rm.score(["q"] * 3, responses, [reference] * 3).tolist()
    assert paraphrase > related > unrelated and paraphrase > 0.6, (paraphrase, related, unrelated)
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from rmrouter.models.store import resolve_model

    encoder = sentence_transformers.SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu")
    expected = encoder.encode([responses[0], reference], convert_to_tensor=True, normalize_embeddings=True)
    assert paraphrase == pytest.approx(float(expected[0] @ expected[1]), abs=1e-4)
