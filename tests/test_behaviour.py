"""Behaviour collection: records, resume, determinism, bad files, and the accuracy table."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from letter_rms import LetterCount, MatchesReference

from rmrouter.behaviour.collect import collect_behaviour, runs_path
from rmrouter.behaviour.table import (
    ANY_RIGHT,
    DATA_LABEL,
    MAJORITY,
    OVERALL,
    accuracy_table,
    coverage_table,
    format_table,
    majority_credit,
    write_behaviour_table,
)
from rmrouter.data.behaviour import NOT_JUDGED, BehaviourRecord, read_behaviour
from rmrouter.data.jsonl import DataError
from rmrouter.data.records import PreferenceRecord, as_messages
from rmrouter.data.sources import PreferenceSource
from rmrouter.machine import describe_machine
from rmrouter.reward_models.base import RewardModel
from rmrouter.reward_models.pool import RewardModelPool


class ListSource(PreferenceSource):
    def __init__(self, records: list[PreferenceRecord]):
        super().__init__(path="unused")
        self.records = records

    def read(self) -> list[PreferenceRecord]:
        return list(self.records)


def pair(i: int, chosen: str, rejected: str, domain: str, reference: str | None = None) -> PreferenceRecord:
    return PreferenceRecord(f"p{i}", as_messages(f"q{i}"), chosen, rejected, domain, "test", reference)


PAIRS = [
    pair(0, "aaa", "a", "x", reference="aaa"),  # a: right, b: tie, ref: right
    pair(1, "b", "bb", "x"),  # a: tie, b: wrong, ref: abstains
    pair(2, "ab", "b", "y", reference="zz"),  # a: right, b: tie, ref: tie
    pair(3, "bbb", "aab", "y"),  # a: wrong, b: right
    pair(4, "a", "b", "y"),  # a: right, b: wrong
]


def make_pool() -> RewardModelPool:
    return RewardModelPool([LetterCount("a", "a"), LetterCount("b", "b"), MatchesReference("ref")])


def test_records_hold_margins_agreement_and_abstention(tmp_path):
    records = collect_behaviour(make_pool(), [ListSource(PAIRS)], tmp_path / "b.jsonl", table=None, batch_size=2)
    assert [r.pair for r in records] == PAIRS
    first, second = records[0], records[1]
    assert first.margin == {"a": 2.0, "b": 0.0, "ref": 1.0}
    assert first.agree == {"a": True, "b": False, "ref": True}
    assert second.margin["b"] == -1.0 and math.isnan(second.margin["ref"]) and not second.agree["ref"]
    assert [r.to_dict() for r in read_behaviour(tmp_path / "b.jsonl")] == [r.to_dict() for r in records]
    row = (tmp_path / "b.jsonl").read_text().splitlines()[1]
    assert '"ref": null' in row


def test_collection_is_deterministic(tmp_path):
    for name in ("one", "two"):
        collect_behaviour(make_pool(), [ListSource(PAIRS)], tmp_path / f"{name}.jsonl", table=None, batch_size=2)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


def test_resume_scores_only_missing_batches_and_matches_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], full, table=None, batch_size=2)

    resumed = tmp_path / "resumed.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], resumed, table=None, batch_size=2, max_batches=1)
    assert len(resumed.read_text().splitlines()) == 2
    pool = make_pool()
    collect_behaviour(pool, [ListSource(PAIRS)], resumed, table=None, batch_size=2)
    assert pool[0].rows_scored == 2 * 3  # the 3 remaining pairs (batches of 2 and 1), both sides
    assert resumed.read_bytes() == full.read_bytes()

    pool = make_pool()
    collect_behaviour(pool, [ListSource(PAIRS)], resumed, table=None, batch_size=2)
    assert pool[0].rows_scored == 0


def test_each_run_over_a_file_is_recorded_beside_it_and_a_new_file_starts_a_new_record(tmp_path):
    output = tmp_path / "b.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], output, table=None, batch_size=2, max_batches=1)
    collect_behaviour(make_pool(), [ListSource(PAIRS)], output, table=None, batch_size=2, command="python cli.py x")
    runs = json.loads(runs_path(output).read_text())
    assert runs_path(output).name == "b.runs.json"
    assert [run["pairs"] for run in runs] == [2, 3]  # the resumed run scored the rest
    assert runs[1]["command"] == "python cli.py x" and runs[1]["batch_size"] == 2
    assert runs[1]["dtypes"] == {"a": "none", "b": "none", "ref": "none"}
    assert set(runs[1]["seconds"]) == {"a", "b", "ref"} and runs[1]["machine"] == describe_machine()

    output.unlink()
    collect_behaviour(make_pool(), [ListSource(PAIRS)], output, table=None, batch_size=5)
    assert [run["pairs"] for run in json.loads(runs_path(output).read_text())] == [5]


def test_pairs_the_data_no_longer_gives_are_warned_about(tmp_path, caplog):
    path = tmp_path / "b.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], path, table=None, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="rmrouter.behaviour.collect"):
        collect_behaviour(make_pool(), [ListSource(PAIRS)], path, table=None, batch_size=2)
        assert "no longer gives" not in caplog.text
        records = collect_behaviour(make_pool(), [ListSource(PAIRS[:3])], path, table=None, batch_size=2)
    assert f"{path} holds 2 pairs that the configured data no longer gives (e.g. p3)" in caplog.text
    assert len(records) == len(PAIRS)  # kept, not silently dropped


def test_resume_after_a_torn_last_line_says_what_it_dropped(tmp_path, caplog):
    full = tmp_path / "full.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], full, table=None, batch_size=2)
    torn = tmp_path / "torn.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    torn.write_text("".join(lines[:3]) + lines[3][:20])  # a crash in the middle of the second batch
    with caplog.at_level(logging.WARNING, logger="rmrouter.behaviour.collect"):
        collect_behaviour(make_pool(), [ListSource(PAIRS)], torn, table=None, batch_size=2)
    assert torn.read_bytes() == full.read_bytes()
    assert f"{torn}: dropped its unfinished last line (20 bytes" in caplog.text


def test_an_empty_behaviour_file_is_refused_by_its_readers_and_resumed_by_collect(tmp_path):
    empty = tmp_path / "b.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=rf"{empty}: no behaviour records \(an empty file\): collect them first"):
        read_behaviour(empty)
    with pytest.raises(DataError, match="no behaviour records"):
        write_behaviour_table(str(empty), str(tmp_path / "table.md"))
    assert not (tmp_path / "table.md").exists()
    from rmrouter.data.behaviour_datamodule import BehaviourDataModule

    with pytest.raises(DataError, match="no behaviour records"):  # the offline router's fit
        BehaviourDataModule(str(empty), ["a", "b"]).setup("fit")
    assert len(collect_behaviour(make_pool(), [ListSource(PAIRS)], empty, table=None)) == len(PAIRS)


def test_a_pair_twice_or_an_infinite_score_is_refused_with_its_line(tmp_path):
    path = tmp_path / "b.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], path, table=None)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + lines[1:2]))
    with pytest.raises(DataError, match=rf"{path}:6: pair id 'p1' again \(first at {path}:2\)"):
        read_behaviour(path)
    row = json.loads(lines[0])
    row["scores"]["a"] = [float("inf"), 1.0]  # json writes Infinity, which json.loads reads back
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: .*RM 'a' has \[inf, 1.0\], expected .* finite numbers"):
        read_behaviour(path)


def test_an_rm_that_scores_infinite_abstains_there_and_is_counted(tmp_path, caplog):
    class Unbounded(RewardModel):
        def _score(self, prompts, responses, references):
            return torch.tensor([float("inf") if r == "b" else 1.0 for r in responses])

    pool = RewardModelPool([LetterCount("a", "a"), Unbounded("u")])
    with caplog.at_level(logging.WARNING, logger="rmrouter.behaviour.collect"):
        records = collect_behaviour(pool, [ListSource(PAIRS)], tmp_path / "b.jsonl", table=None)
    assert [record.eligible["u"] for record in records] == [True, False, False, True, False]  # a side is "b"
    assert "infinite scores made these RMs abstain on pairs of this batch: {'u': 3}" in caplog.text


def test_a_file_from_another_pool_is_refused(tmp_path):
    output = tmp_path / "b.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], output, table=None, batch_size=2)
    other = RewardModelPool([LetterCount("a", "a"), LetterCount("c", "c")])
    with pytest.raises(DataError, match=r"b\.jsonl:1: written by RMs \['a', 'b', 'ref'\], expected \['a', 'c'\]"):
        collect_behaviour(other, [ListSource(PAIRS)], output, table=None)


def test_a_malformed_behaviour_line_names_file_and_line(tmp_path):
    output = tmp_path / "b.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], output, table=None)
    output.write_text(output.read_text() + '{"id": "x"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl:6: not a behaviour record"):
        read_behaviour(output)


def test_duplicate_pair_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'p0' occurs twice"):
        collect_behaviour(make_pool(), [ListSource(PAIRS), ListSource(PAIRS[:1])], tmp_path / "b.jsonl", table=None)


def test_duplicate_rm_names_are_refused():
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        RewardModelPool([LetterCount("a", "a"), LetterCount("a", "b")])


@pytest.mark.parametrize(
    ("margins", "credit"),
    [([1.0, 2.0, -1.0], 1.0), ([1.0, -1.0], 0.5), ([-1.0, float("nan"), 0.0], 0.0), ([float("nan")], 0.5)],
)
def test_majority_credit(margins, credit):
    assert majority_credit(margins) == credit


def test_accuracy_table_by_hand(tmp_path):
    records = collect_behaviour(make_pool(), [ListSource(PAIRS)], tmp_path / "b.jsonl", table=tmp_path / "t.md")
    table = accuracy_table(records, ["a", "b", "ref"])
    assert table["a"] == {"x": 0.5, "y": 2 / 3, OVERALL: 3 / 5}
    assert table["b"] == {"x": 0.0, "y": 1 / 3, OVERALL: 1 / 5}
    assert table["ref"] == {"x": 1.0, "y": 0.0, OVERALL: 1 / 2}  # over the pairs it could judge: p0 and p2
    assert coverage_table(records, ["a", "b", "ref"])["ref"] == {"x": 1 / 2, "y": 1 / 3, OVERALL: 2 / 5}
    # by domain, fitted on these records: x ranks ref (1/1), a, b: p0 -> ref (right), p1 -> a (ref cannot judge it;
    # a ties); y ranks a (2/3) first: right on p2 and p4
    assert table[DATA_LABEL] == {"x": 0.5, "y": 2 / 3, OVERALL: 3 / 5}
    # votes per pair: (+1, 0, +1) -> 1; (0, -1, nan) -> 0; (+1, 0, 0) -> 1; (-1, +1, nan) -> 0.5; (+1, -1, nan) -> 0.5
    assert table[MAJORITY] == {"x": 0.5, "y": 2 / 3, OVERALL: 3 / 5}
    assert table[ANY_RIGHT] == {"x": 0.5, "y": 1.0, OVERALL: 4 / 5}
    markdown = (tmp_path / "t.md").read_text()
    assert format_table(records, ["a", "b", "ref"]) in markdown
    assert "| a | 50.0 | **66.7** | **60.0** |" in markdown  # ref is best on x, over the one pair it judged
    assert "| any RM right | 50.0 | 100.0 | 80.0 |" in markdown
    assert "| ref | **100.0** | 0.0 | 50.0 |" in markdown and "| ref | 50.0 | 33.3 | 40.0 |" in markdown


def test_the_table_of_a_smaller_pool_votes_and_routes_with_its_rms_alone(tmp_path):
    behaviour = tmp_path / "b.jsonl"
    pairs = [*PAIRS, pair(5, "b", "bbbb", "x", reference="b")]  # a: tie, b: wrong, ref: right
    collect_behaviour(make_pool(), [ListSource(pairs)], behaviour, table=tmp_path / "all.md")
    write_behaviour_table(behaviour, tmp_path / "ab.md", rm_names=["b", "a"])
    smaller = [record.restricted(["b", "a"]) for record in read_behaviour(behaviour)]
    markdown = (tmp_path / "ab.md").read_text()
    assert format_table(smaller, ["b", "a"]) in markdown and "| ref |" not in markdown
    assert "python cli.py table --behaviour" in markdown and "--rm_names '[b, a]'" in markdown
    # votes of a and b alone: (+1, 0) -> 1; (0, -1) -> 0; (+1, 0) -> 1; (-1, +1) -> 0.5; (+1, -1) -> 0.5;
    # (0, -1) -> 0, where ref's vote would have made it a tie; and no RM right on p5 without ref
    table = accuracy_table(smaller, ["b", "a"])
    assert table[MAJORITY] == {"x": 1 / 3, "y": 2 / 3, OVERALL: 1 / 2}
    assert table[ANY_RIGHT] == {"x": 1 / 3, "y": 1.0, OVERALL: 4 / 6}
    assert "| majority vote | 33.3 | 66.7 | 50.0 |" in markdown
    write_behaviour_table(behaviour, tmp_path / "every.md")
    assert (tmp_path / "every.md").read_text().split("\n")[4:] == (tmp_path / "all.md").read_text().split("\n")[4:]


def test_behaviour_record_round_trip_keeps_each_sides_score():
    record = BehaviourRecord(PAIRS[0], {"a": (2.5, 1.0), "b": NOT_JUDGED})
    row = record.to_dict()
    assert row["scores"] == {"a": [2.5, 1.0], "b": None} and row["agree"] == {"a": True, "b": False}
    again = BehaviourRecord.from_dict(json.loads(json.dumps(row)))
    assert again.pair == record.pair and again.scores["a"] == (2.5, 1.0) and again.margin["a"] == 1.5
    assert math.isnan(again.margin["b"]) and again.eligible == {"a": True, "b": False}


def test_collected_scores_are_each_sides_score(tmp_path):
    records = collect_behaviour(make_pool(), [ListSource(PAIRS)], tmp_path / "b.jsonl", table=None, batch_size=2)
    assert records[0].scores == {"a": (3.0, 1.0), "b": (0.0, 0.0), "ref": (1.0, 0.0)}  # "aaa" vs "a", ref "aaa"
    assert records[1].scores["ref"] == NOT_JUDGED and records[1].scores["b"] == (1.0, 2.0)


def test_a_file_written_before_per_response_scores_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "old.jsonl"
    old = {**PAIRS[0].to_dict(), "agree": {"a": True}, "margin": {"a": 2.0}}
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(DataError, match=r"old\.jsonl:1: .*field 'scores' missing: written by an older rmrouter"):
        read_behaviour(path)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("agree", None, "field 'agree' missing"),
        ("agree", {"a": True, "b": False}, "field 'agree': no true/false label for RM 'ref'"),
        ("agree", {"a": False, "b": False, "ref": True}, r"field 'agree': RM 'a' is labelled False but its scores \[3"),
        ("scores", {"a": ["3", 1.0], "b": [0.0, 0.0], "ref": None}, "field 'scores': RM 'a' has \\['3', 1.0\\]"),
        ("scores", {"a": [3.0], "b": [0.0, 0.0], "ref": None}, "field 'scores': RM 'a' has \\[3.0\\]"),
    ],
)
def test_edited_labels_or_margins_are_refused(tmp_path, field, value, expected):
    output = tmp_path / "b.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], output, table=None)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    rows[0][field] = value
    output.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=rf"b\.jsonl:1: not a behaviour record \({expected}"):
        read_behaviour(output)


def test_the_collection_device_is_handed_to_the_trainer_as_one_device():
    from rmrouter.behaviour.collect import lightning_device

    assert lightning_device("cpu") == ("cpu", 1) and lightning_device("cuda") == ("gpu", 1)
    assert lightning_device("cuda:1") == ("gpu", [1])
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:<index>'"):
        lightning_device("tpu")
