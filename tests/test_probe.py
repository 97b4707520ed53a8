"""The probe of a behaviour file: routing credit, each method on hand-built folds, and the command end to end."""

from __future__ import annotations

import numpy as np
import pytest
from behaviour_helpers import RM_NAMES, write_behaviour

from rmrouter.behaviour.probe import (
    CEILING,
    LOOKUP,
    MAJORITY,
    PER_PAIR,
    PER_PAIR_LABEL,
    SINGLE,
    TASK_MIXTURE,
    TWO_STAGE,
    ProbeData,
    cross_validate,
    fold_credits,
    label_accuracies,
    routed_credit,
)
from rmrouter.cli import main


def test_routed_credit_takes_the_best_eligible_rm_and_counts_a_pair_no_rm_judged_as_wrong():
    scores = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    right = np.array([[False, True], [False, True], [True, True]])
    eligible = np.array([[True, True], [False, True], [False, False]])
    assert routed_credit(scores, right, eligible).tolist() == [0.0, 1.0, 0.0]


def test_label_accuracies_are_over_the_rows_each_rm_could_judge():
    right = np.array([[True, False], [False, False], [True, True]])
    eligible = np.array([[True, True], [True, False], [True, True]])
    table = label_accuracies(["a", "a", "b"], ["a", "b", "c"], right, eligible)
    assert table.tolist() == [[0.5, 0.0], [1.0, 1.0], [0.0, 0.0]]  # RM 1 judged one `a` row; nobody judged `c`


def two_domain_data(rows: int = 80, seed: int = 0) -> ProbeData:
    """RM 0 is right on domain `a`; on domain `b` the pair's text says which RM is right (feature 2's sign).

    Feature 0/1 is the domain, so a classifier recovers it from the text; the last feature is noise.
    """
    generator = np.random.default_rng(seed)
    domains = ["a" if i % 2 == 0 else "b" for i in range(rows)]
    hint = generator.choice([-1.0, 1.0], size=rows)
    features = np.stack(
        [
            [float(d == "a") for d in domains],
            [float(d == "b") for d in domains],
            hint * np.array([d == "b" for d in domains]),
            generator.normal(size=rows),
        ],
        axis=1,
    )
    right_one = np.array([d == "b" and h > 0 for d, h in zip(domains, hint, strict=True)])
    right = np.stack([~right_one, right_one], axis=1)
    margins = np.where(right, 1.0, -1.0)
    return ProbeData(
        features=features,
        right=right,
        eligible=np.ones_like(right),
        margins=margins,
        domains=domains,
        sources=["s"] * rows,
        groups=[f"prompt {i}" for i in range(rows)],
    )


def test_each_method_on_a_fold_where_the_text_says_more_than_the_label():
    data = two_domain_data()
    train, test = np.arange(0, 60), np.arange(60, 80)
    credits = fold_credits(data, train, test, C=10.0)
    domain_a = np.array(data.domains)[test] == "a"
    # RM 0 is always right on `a` and on about half of `b`: the best single RM; the lookup takes it on `a`
    assert np.array_equal(credits[SINGLE], data.right[test, 0].astype(float))
    assert credits[LOOKUP][domain_a].tolist() == [1.0] * int(domain_a.sum())
    assert np.array_equal(credits[TWO_STAGE], credits[LOOKUP])  # the domain is in the text
    assert credits[TASK_MIXTURE][domain_a].tolist() == [1.0] * int(domain_a.sum())
    assert credits[MAJORITY].tolist() == [0.5] * 20  # two RMs that always disagree
    assert credits[CEILING].tolist() == [1.0] * 20
    # only a per-pair model reads which RM is right on `b`
    assert credits[PER_PAIR_LABEL].tolist() == [1.0] * 20
    assert credits[PER_PAIR].mean() > credits[LOOKUP].mean()


def test_cross_validation_scores_every_pair_once_per_repeat_and_needs_a_prompt_per_fold():
    data = two_domain_data(rows=40)
    credits = cross_validate(data, folds=4, repeats=3, seed=0, C=1.0)
    assert credits[CEILING].shape == (3, 40) and credits[CEILING].min() == 1.0  # every cell written
    assert credits[SINGLE].mean() == pytest.approx(data.right[:, 0].mean())  # every fold picks RM 0, right on 3 in 4
    few = ProbeData(**{**data.__dict__, "groups": ["same prompt"] * 20 + ["other"] * 20})
    with pytest.raises(ValueError, match="4 folds need at least 4 distinct prompts, the behaviour data has 2"):
        cross_validate(few, folds=4, repeats=1, seed=0, C=1.0)


def test_probe_command_writes_the_report_of_a_behaviour_file(tmp_path, tiny_encoder_dir):
    behaviour, output = tmp_path / "behaviour.jsonl", tmp_path / "docs" / "probe.md"
    write_behaviour(behaviour)  # RM k is right on domain k % 4, wrong elsewhere
    args = ["--behaviour", str(behaviour), "--output", str(output), "--encoder", tiny_encoder_dir, "--folds", "3"]
    main(["probe", *args, "--repeats", "2"])
    report = output.read_text()
    command = f"python cli.py probe --behaviour {behaviour} --output {output} --encoder {tiny_encoder_dir} --folds 3"
    assert f"Written by `{command} --repeats 2` (" in report
    assert f"RMs {RM_NAMES}" in report
    assert "| data-label lookup | 100.0 ± 0.0 | (the lookup) | 100.0 | 100.0 | 100.0 | 100.0 |" in report
    assert "| majority vote | 0.0 ± 0.0 | -100.0 ± 0.0, below |" in report  # one RM right, five wrong
    assert "| lookup + per-pair residual | 100.0 ± 0.0 | +0.0 ± 0.0, no difference |" in report
    single = next(line for line in report.splitlines() if line.startswith("| best single RM |"))
    assert single.split(" | ")[2].endswith(", below")  # the RM of one domain, wrong on the three others
    assert "| ceiling | 100.0 ± 0.0 | +0.0 ± 0.0, no difference |" in report
