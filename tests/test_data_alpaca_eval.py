"""AlpacaEval loaders on small hand-written annotation files: both pairings, the caps, and bad rows located."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from data_helpers import assert_bad_row, sha, write_lines

from rmrouter.data import AlpacaEvalPairs, AlpacaEvalPrompts, DataError, PreferenceRecord, PromptRecord

I1, I2 = "Name three primary colours.", "Write a limerick about a cat."
DATASETS = {I1: "koala", I2: "oasst"}
REFERENCE = {I1: "Red, yellow and blue.", I2: "There once was a cat named Lou..."}
# preference per (generator, instruction): near 1 the reference won, near 2 the model did.
PREFERENCES = {"modelA": {I1: 1.0, I2: 1.9}, "modelB": {I1: 1.6, I2: 1.2}, "modelC": {I1: 1.95, I2: 1.1}}


def answer(generator: str, instruction: str) -> str:
    return f"{generator}'s answer to {instruction}"


def annotation(generator: str, instruction: str, **overrides) -> dict:
    row = {
        "instruction": instruction,
        "dataset": DATASETS[instruction],
        "output_1": REFERENCE[instruction],
        "generator_1": "gpt4_1106_preview",
        "output_2": answer(generator, instruction),
        "generator_2": generator,
        "preference": PREFERENCES[generator][instruction],
    }
    return {**row, **overrides}


@pytest.fixture
def annotations(tmp_path) -> Path:
    folder = tmp_path / "annotations"
    folder.mkdir()
    for generator in PREFERENCES:
        with gzip.open(folder / f"{generator}.jsonl.gz", "wt") as handle:
            handle.writelines(json.dumps(annotation(generator, i)) + "\n" for i in (I1, I2))
    return folder


def pair(instruction: str, chosen: str, rejected: str, name: str, reference: str | None) -> PreferenceRecord:
    prompt = [{"role": "user", "content": instruction}]
    source = f"alpaca_eval/{name}"
    return PreferenceRecord(
        f"alpaca_eval:{sha(instruction)}:{name}", prompt, chosen, rejected, DATASETS[instruction], source, reference
    )


def test_reference_vs_model_drops_near_ties_and_hides_the_reference(annotations):
    records = AlpacaEvalPairs(min_margin=0.25, path=str(annotations)).load()
    ref, ans = REFERENCE, answer
    assert records == [
        pair(I1, ref[I1], ans("modelA", I1), "modelA", None),
        pair(I2, ans("modelA", I2), ref[I2], "modelA", None),
        # modelB on I1 (1.6) is a near-tie at min_margin 0.25
        pair(I2, ref[I2], ans("modelB", I2), "modelB", None),
        pair(I1, ans("modelC", I1), ref[I1], "modelC", None),
        pair(I2, ref[I2], ans("modelC", I2), "modelC", None),
    ]
    assert len(AlpacaEvalPairs(min_margin=0.0, path=str(annotations)).load()) == 6


def test_model_vs_model_prefers_the_stronger_answer_and_keeps_the_reference(annotations):
    records = AlpacaEvalPairs(pairing="model_vs_model", min_margin=0.25, path=str(annotations)).load()
    ans = answer
    assert records == [
        pair(I1, ans("modelB", I1), ans("modelA", I1), "modelA-vs-modelB", REFERENCE[I1]),
        pair(I1, ans("modelC", I1), ans("modelA", I1), "modelA-vs-modelC", REFERENCE[I1]),
        pair(I1, ans("modelC", I1), ans("modelB", I1), "modelB-vs-modelC", REFERENCE[I1]),
        pair(I2, ans("modelA", I2), ans("modelB", I2), "modelA-vs-modelB", REFERENCE[I2]),
        pair(I2, ans("modelA", I2), ans("modelC", I2), "modelA-vs-modelC", REFERENCE[I2]),
        # modelB vs modelC on I2 differ by 0.1 only: dropped
    ]
    capped = AlpacaEvalPairs(pairing="model_vs_model", max_pairs_per_prompt=1, path=str(annotations)).load()
    assert [record.prompt[0]["content"] for record in capped] == [I1, I2]
    assert all(record in records for record in capped)
    assert AlpacaEvalPairs(pairing="model_vs_model", max_pairs_per_prompt=1, path=str(annotations)).load() == capped


def test_generators_choose_files_in_order(annotations):
    records = AlpacaEvalPairs(generators=["modelC", "modelA"], min_margin=0.0, path=str(annotations)).load()
    assert [record.source for record in records] == ["alpaca_eval/modelC"] * 2 + ["alpaca_eval/modelA"] * 2
    one_file = AlpacaEvalPairs(min_margin=0.0, path=str(annotations / "modelB.jsonl.gz")).load()
    assert [record.source for record in one_file] == ["alpaca_eval/modelB"] * 2
    with pytest.raises(
        DataError, match=r"no annotations for \['modelZ'\]; available: \['modelA', 'modelB', 'modelC'\]"
    ):
        AlpacaEvalPairs(generators=["modelZ"], path=str(annotations)).load()


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="pairing"):
        AlpacaEvalPairs(pairing="both")
    with pytest.raises(ValueError, match=r"min_margin must be in \[0, 0.5\)"):
        AlpacaEvalPairs(min_margin=0.5)
    with pytest.raises(ValueError, match="twice"):
        AlpacaEvalPairs(generators=["a", "a"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"preference": None}, "field 'preference': missing"),
        ({"preference": 2.5}, "field 'preference': 2.5 is outside [1, 2]"),
        ({"preference": "high"}, "field 'preference': expected a number in [1, 2], got str"),
        ({"output_2": ""}, "field 'output_2': empty"),
        ({"dataset": None}, "field 'dataset': missing"),
    ],
)
@pytest.mark.parametrize("pairing", ["reference_vs_model", "model_vs_model"])
def test_bad_annotation_rows(annotations, caplog, overrides, expected, pairing):
    bad_file = annotations / "modelB.jsonl.gz"
    with gzip.open(bad_file, "wt") as handle:
        handle.write(json.dumps(annotation("modelB", I1, **overrides)) + "\n")
        handle.write(json.dumps(annotation("modelB", I2)) + "\n")
    good = {"reference_vs_model": 5, "model_vs_model": 3}[pairing]  # modelB's I1 row is gone

    def make(**kw):
        return AlpacaEvalPairs(pairing=pairing, path=str(annotations), **kw)

    assert_bad_row(make, str(bad_file), 1, expected, good, caplog)


def test_malformed_annotation_line(tmp_path, caplog):
    path = write_lines(
        tmp_path / "modelA.jsonl", [annotation("modelA", I1), '{"instruction": ', annotation("modelA", I2)]
    )
    assert_bad_row(lambda **kw: AlpacaEvalPairs(path=path, **kw), path, 2, "malformed JSON", 2, caplog)


def test_prompts_from_reference_outputs(tmp_path, caplog):
    rows = [{"instruction": i, "dataset": DATASETS[i], "output": REFERENCE[i], "generator": "gpt4"} for i in (I1, I2)]
    path = write_lines(tmp_path / "reference_outputs.jsonl", rows)
    assert AlpacaEvalPrompts(path=path).load() == [
        PromptRecord(
            f"alpaca_eval:{sha(i)}",
            [{"role": "user", "content": i}],
            DATASETS[i],
            "alpaca_eval/reference",
            REFERENCE[i],
        )
        for i in (I1, I2)
    ]
    path = write_lines(tmp_path / "bad.jsonl", [rows[0], {**rows[1], "output": ["a list"]}])
    assert_bad_row(lambda **kw: AlpacaEvalPrompts(path=path, **kw), path, 2, "field 'output': expected text", 1, caplog)
