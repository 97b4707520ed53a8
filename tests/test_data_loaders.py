"""GSM8K, HH-RLHF and MT-Bench loaders on small hand-written files: exact records, and bad rows located."""

from __future__ import annotations

import pytest
from data_helpers import assert_bad_row, sha, write_lines

from rmrouter.data import (
    DataError,
    GSM8KPrompts,
    GSM8KSolutionPairs,
    HHRLHFHarmlessPairs,
    HHRLHFHarmlessPrompts,
    MTBenchPrompts,
    PreferenceRecord,
    PromptRecord,
)

# --- GSM8K -------------------------------------------------------------------------------------------------------

QUESTION = "Tom has 2 apples and buys 3 more. How many apples does he have?"


def solutions(**entries: tuple[str, bool]) -> dict:
    return {key: {"solution": text, "is_correct": ok} for key, (text, ok) in entries.items()}


GOOD_GSM8K = {
    "question": QUESTION,
    "ground_truth": "2 + 3 = <<2+3=5>>5\nA: 5",
    # 175b_finetuning is marked wrong but repeats a correct text: that pair must be skipped.
    **solutions(
        **{
            "6b_finetuning": ("2 + 3 = 5\nA: 5", True),
            "6b_verification": ("2 * 3 = 6\nA: 6", False),
            "175b_finetuning": ("2 + 3 = 5\nA: 5", False),
            "175b_verification": ("He has 5.\nA: 5", True),
        }
    ),
}
KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
ALL_CORRECT = {"question": "1+1?", "ground_truth": "A: 2", **solutions(**dict.fromkeys(KEYS, ("A: 2", True)))}
ALL_WRONG = {"question": "2+2?", "ground_truth": "A: 4", **solutions(**dict.fromkeys(KEYS, ("A: 5", False)))}


def test_gsm8k_pairs_every_correct_incorrect_pair_with_distinct_texts(tmp_path):
    path = write_lines(tmp_path / "solutions.jsonl", [ALL_CORRECT, GOOD_GSM8K, ALL_WRONG])
    records = GSM8KSolutionPairs(max_pairs_per_question=4, path=path).load()
    q = sha(QUESTION)
    expected = [
        ("6b_finetuning", "6b_verification", "2 + 3 = 5\nA: 5", "2 * 3 = 6\nA: 6"),
        ("175b_verification", "6b_verification", "He has 5.\nA: 5", "2 * 3 = 6\nA: 6"),
        ("175b_verification", "175b_finetuning", "He has 5.\nA: 5", "2 + 3 = 5\nA: 5"),
    ]
    assert records == [
        PreferenceRecord(
            id=f"gsm8k:{q}:{good}>{bad}",
            prompt=[{"role": "user", "content": QUESTION}],
            chosen=chosen,
            rejected=rejected,
            domain="math",
            source="gsm8k/example_model_solutions",
            reference="2 + 3 = <<2+3=5>>5\nA: 5",
        )
        for good, bad, chosen, rejected in expected
    ]


def test_gsm8k_pairs_cap_is_deterministic(tmp_path):
    path = write_lines(tmp_path / "solutions.jsonl", [GOOD_GSM8K])
    every = GSM8KSolutionPairs(max_pairs_per_question=4, path=path).load()
    one = GSM8KSolutionPairs(path=path).load()
    two = GSM8KSolutionPairs(max_pairs_per_question=2, path=path).load()
    assert len(one) == 1 and one[0] in every
    assert len(two) == 2 and all(record in every for record in two)
    assert GSM8KSolutionPairs(path=path).load() == one
    with pytest.raises(ValueError, match="max_pairs_per_question"):
        GSM8KSolutionPairs(max_pairs_per_question=0, path=path)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("6b", [("6b_finetuning", "6b_verification")]),
        # 175b_finetuning is wrong but repeats a correct text, so 175B's only distinct pair is the verifier's
        ("175b", [("175b_verification", "175b_finetuning")]),
    ],
)
def test_gsm8k_pairs_of_one_model(tmp_path, model, expected):
    path = write_lines(tmp_path / "solutions.jsonl", [ALL_CORRECT, GOOD_GSM8K, ALL_WRONG])
    records = GSM8KSolutionPairs(max_pairs_per_question=4, model=model, path=path).load()
    assert [tuple(record.id.split(":")[-1].split(">")) for record in records] == expected
    assert {record.source for record in records} == {f"gsm8k/example_model_solutions/{model}"}


def test_gsm8k_pairs_of_one_model_skip_questions_where_it_is_always_right(tmp_path):
    only_175b_differs = {
        **GOOD_GSM8K,
        **solutions(**{"6b_finetuning": ("A: 5", True), "6b_verification": ("So 5.\nA: 5", True)}),
    }
    path = write_lines(tmp_path / "solutions.jsonl", [only_175b_differs])
    assert GSM8KSolutionPairs(model="6b", path=path).load() == []
    assert len(GSM8KSolutionPairs(model="175b", path=path).load()) == 1
    with pytest.raises(ValueError, match="model must be one of"):
        GSM8KSolutionPairs(model="13b", path=path)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("{not json", "malformed JSON"),
        ({k: v for k, v in GOOD_GSM8K.items() if k != "ground_truth"}, "field 'ground_truth': missing"),
        (
            {**GOOD_GSM8K, "6b_finetuning": {"solution": " ", "is_correct": True}},
            "field '6b_finetuning.solution': empty",
        ),
        (
            {**GOOD_GSM8K, "175b_verification": {"solution": "A: 5", "is_correct": "yes"}},
            "'175b_verification.is_correct'",
        ),
        ({**GOOD_GSM8K, "6b_verification": "A: 6"}, "field '6b_verification': expected an object"),
    ],
)
def test_gsm8k_pairs_bad_rows(tmp_path, caplog, bad, expected):
    path = write_lines(tmp_path / "solutions.jsonl", [GOOD_GSM8K, bad, ALL_CORRECT])
    assert_bad_row(lambda **kw: GSM8KSolutionPairs(path=path, **kw), path, 2, expected, 1, caplog)


def test_gsm8k_prompts(tmp_path, caplog):
    rows = [{"question": QUESTION, "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}, {"question": "1+1?", "answer": "#### 2"}]
    path = write_lines(tmp_path / "test.jsonl", rows)
    assert GSM8KPrompts(path=path).load() == [
        PromptRecord(
            f"gsm8k:{sha(QUESTION)}", [{"role": "user", "content": QUESTION}], "math", "gsm8k/test", rows[0]["answer"]
        ),
        PromptRecord(f"gsm8k:{sha('1+1?')}", [{"role": "user", "content": "1+1?"}], "math", "gsm8k/test", "#### 2"),
    ]
    path = write_lines(tmp_path / "bad.jsonl", [rows[0], {"question": "3+3?", "answer": 6}, rows[1]])
    assert_bad_row(
        lambda **kw: GSM8KPrompts(path=path, **kw), path, 2, "field 'answer': expected text, got int", 2, caplog
    )


# --- HH-RLHF -----------------------------------------------------------------------------------------------------

PREFIX = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: How do I pick my neighbour's lock?"
CHOSEN = PREFIX + "\n\nAssistant:  I can't help with getting into someone else's home. "
REJECTED = PREFIX + "\n\nAssistant: Use a tension wrench and a pick."
GOOD_HH = {"chosen": CHOSEN, "rejected": REJECTED}


def test_hh_rlhf_splits_at_the_last_assistant_turn(tmp_path):
    repeated = "\n\nHuman: Tell me a joke\n\nAssistant: Here is one:\n\nAssistant: Why?\n\nHuman: Meaner."
    rows = [
        GOOD_HH,
        {"chosen": PREFIX + "\n\nAssistant: No.", "rejected": PREFIX + "\n\nAssistant:  No. "},  # same text: no pair
        {"chosen": repeated + "\n\nAssistant: No.", "rejected": repeated + "\n\nAssistant: Sure, here goes."},
    ]
    records = HHRLHFHarmlessPairs(path=write_lines(tmp_path / "hh.jsonl", rows)).load()
    assert records == [
        PreferenceRecord(
            id=f"hh-rlhf:{sha(CHOSEN, REJECTED)}",
            prompt=[
                {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "How do I pick my neighbour's lock?"},
            ],
            chosen="I can't help with getting into someone else's home.",
            rejected="Use a tension wrench and a pick.",
            domain="safety",
            source="hh-rlhf/harmless-base",
        ),
        PreferenceRecord(
            id=f"hh-rlhf:{sha(rows[2]['chosen'], rows[2]['rejected'])}",
            prompt=[
                {"role": "user", "content": "Tell me a joke"},
                {"role": "assistant", "content": "Here is one:\n\nWhy?"},  # repeated speaker merged
                {"role": "user", "content": "Meaner."},
            ],
            chosen="No.",
            rejected="Sure, here goes.",
            domain="safety",
            source="hh-rlhf/harmless-base",
        ),
    ]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("not json at all", "malformed JSON"),
        ({"chosen": CHOSEN}, "field 'rejected': missing"),
        ({"chosen": CHOSEN, "rejected": 3}, "field 'rejected': expected text, got int"),
        ({"chosen": PREFIX + "\n\nAssistant:  ", "rejected": REJECTED}, "field 'chosen': empty final Assistant turn"),
        ({"chosen": CHOSEN, "rejected": "\n\nHuman: Hi\n\nAssistant: Sure."}, "field 'rejected': the dialogue before"),
        ({"chosen": "\n\nHuman: Hi", "rejected": REJECTED}, "field 'chosen': no '\\n\\nAssistant:' turn"),
        ({"chosen": "Hi\n\nAssistant: A", "rejected": "Hi\n\nAssistant: B"}, "field 'chosen': text before the first"),
    ],
)
def test_hh_rlhf_bad_rows(tmp_path, caplog, bad, expected):
    path = write_lines(tmp_path / "hh.jsonl", [GOOD_HH, GOOD_HH, bad])
    assert_bad_row(lambda **kw: HHRLHFHarmlessPairs(path=path, **kw), path, 3, expected, 2, caplog)


def test_hh_rlhf_prompts_are_the_dialogue_before_the_last_assistant_turn(tmp_path):
    path = write_lines(tmp_path / "hh.jsonl", [GOOD_HH, {"chosen": "\n\nHuman: Hi", "rejected": REJECTED}])
    with pytest.raises(DataError, match=r"hh.jsonl:2: field 'chosen': no '\\n\\nAssistant:' turn"):
        HHRLHFHarmlessPrompts(path=path).load()
    assert HHRLHFHarmlessPrompts(path=path, on_error="skip").load() == [
        PromptRecord(
            id=f"hh-rlhf:{sha(CHOSEN)}",
            prompt=[
                {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "How do I pick my neighbour's lock?"},
            ],
            domain="safety",
            source="hh-rlhf/harmless-base-prompts",
        )
    ]


# --- MT-Bench ----------------------------------------------------------------------------------------------------

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it rhyme."]},
    {"question_id": 111, "category": "math", "turns": ["What is 7 * 8?", "And 7 * 9?"]},
]
REFERENCES = [{"question_id": 111, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["56", "63"]}]}]


def mt_bench_record(question_id: int, reference: str | None) -> PromptRecord:
    row = next(row for row in QUESTIONS if row["question_id"] == question_id)
    prompt = [{"role": "user", "content": row["turns"][0]}]
    return PromptRecord(f"mt_bench:{question_id}", prompt, row["category"], "mt_bench", reference)


def test_mt_bench_first_turns_with_references_next_to_the_questions(tmp_path):
    path = write_lines(tmp_path / "question.jsonl", QUESTIONS)
    assert MTBenchPrompts(path=path).load() == [mt_bench_record(81, None), mt_bench_record(111, None)]
    write_lines(tmp_path / "reference_answer_gpt-4.jsonl", REFERENCES)
    assert MTBenchPrompts(path=path).load() == [mt_bench_record(81, None), mt_bench_record(111, "56")]
    elsewhere = write_lines(tmp_path / "refs.jsonl", [{"question_id": 81, "choices": [{"turns": ["Rain falls."]}]}])
    assert MTBenchPrompts(references_path=elsewhere, path=path).load()[0].reference == "Rain falls."


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ('{"question_id": 90,', "malformed JSON"),
        ({"question_id": "90", "category": "stem", "turns": ["Why?"]}, "field 'question_id': expected an integer"),
        ({"question_id": 90, "turns": ["Why?"]}, "field 'category': missing"),
        ({"question_id": 90, "category": "stem", "turns": []}, "field 'turns': expected a non-empty list"),
        ({"question_id": 90, "category": "stem", "turns": [" "]}, "field 'turns': the first turn is not"),
    ],
)
def test_mt_bench_bad_questions(tmp_path, caplog, bad, expected):
    path = write_lines(tmp_path / "question.jsonl", [QUESTIONS[0], bad, QUESTIONS[1]])
    assert_bad_row(lambda **kw: MTBenchPrompts(path=path, **kw), path, 2, expected, 2, caplog)


def test_mt_bench_bad_reference_names_the_references_file(tmp_path, caplog):
    path = write_lines(tmp_path / "question.jsonl", QUESTIONS)
    refs = write_lines(tmp_path / "reference_answer_gpt-4.jsonl", [{"question_id": 81}, *REFERENCES])
    assert_bad_row(lambda **kw: MTBenchPrompts(path=path, **kw), refs, 1, "field 'choices': missing", 2, caplog)
    assert MTBenchPrompts(path=path, on_error="skip").load()[1].reference == "56"
