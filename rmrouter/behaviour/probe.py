"""How much can routing learn beyond a pair's label? A cross-validated probe of a behaviour file, before any training.

    python cli.py probe --behaviour rmrouter/shipped/behaviour_large --output docs/probe_large.md

The features are the router's own input without its MLP: a frozen text encoder's symmetric pair features
`[e + e'; |e - e'|]` (`rmrouter.models.pair_encoder`), from the same embedding store as the offline router's fits.
Each method is fitted on the training folds and scored on the held-out fold:

- **best single RM**: the RM most often right on the training folds (the first eligible of its ranking);
- **majority vote** of every RM (fits nothing);
- **data-label lookup**: the RM best on the pair's label in the training folds (`DataLabelRouting`);
- **per-pair**: per RM, a logistic model of "this RM is right" from the features; the most probable eligible RM;
- **lookup + per-pair residual**: the same with the label's one-hot appended, penalised far less than the text
  (`LABEL_SCALE`): the label's effect plus a per-pair residual;
- **two-stage, label-free**: a logistic classifier of the label from the features, then the lookup of the label it
  predicts, so no label is read at routing time;
- **task mixture, label-free**: the same classifier's probabilities `q(t | x)` weigh each label's RM accuracies in
  training, `sum_t q(t | x) acc[t, n]`, and the pair goes to the eligible RM with the highest: it hedges where the
  text leaves the label in doubt (the task-aware router's label-free routing, `rmrouter.routers.task_aware`, without
  its residual);
- **ceiling**: some eligible RM is right.

The label is the lookup's: a pair's domain. Folds group pairs by prompt text: the pairs of one prompt share its text
(AlpacaEval's models answer the same instructions), and a model that saw a prompt's other pairs would be credited for
recognising the prompt. Each repeat reshuffles the folds. Accuracies are mean and standard deviation over repeats;
each comparison with the lookup is a paired test over pairs of their right-shares averaged over repeats.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from rmrouter.data.behaviour import BehaviourRecord, read_behaviour, rm_names_of
from rmrouter.data.records import as_text
from rmrouter.machine import describe_machine
from rmrouter.models.embedding_store import EmbeddingCache, EmbeddingStore, weight_fingerprint
from rmrouter.models.pair_encoder import build_text_encoder, pair_features, pair_text
from rmrouter.routers.data_label import DataLabelRouting, rank_rms
from rmrouter.routers.decisions import majority_vote_credit
from rmrouter.stats import paired_test

log = logging.getLogger(__name__)

SINGLE, MAJORITY, LOOKUP = "best single RM", "majority vote", "data-label lookup"
PER_PAIR, PER_PAIR_LABEL, CEILING = "per-pair", "lookup + per-pair residual", "ceiling"
TWO_STAGE, TASK_MIXTURE = "two-stage, label-free", "task mixture, label-free"
METHODS = (SINGLE, MAJORITY, LOOKUP, PER_PAIR, PER_PAIR_LABEL, TWO_STAGE, TASK_MIXTURE, CEILING)
# The label's one-hot columns are scaled up in the residual model, which makes their L2 penalty 100 times weaker than
# the text features': the label's effect is estimated almost freely (as the lookup estimates it), and the penalty
# falls on the per-pair residual.
LABEL_SCALE = 10.0


@dataclass(frozen=True)
class ProbeData:
    """What the probe reads of a behaviour file, one row per pair.

    Args:
        features: `[P, F]` pair features.
        right: `[P, N]` bool, RM `n` prefers the chosen side.
        eligible: `[P, N]` bool, RM `n` could judge the pair.
        margins: `[P, N]` score margins, NaN where the RM abstained (majority vote's votes).
        domains: Each pair's label.
        sources: Each pair's source (the lookup's fallback label).
        groups: Each pair's prompt text: the folds keep a prompt's pairs together.
    """

    features: np.ndarray
    right: np.ndarray
    eligible: np.ndarray
    margins: np.ndarray
    domains: list[str]
    sources: list[str]
    groups: list[str]


def routed_credit(scores: np.ndarray, right: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """`[P]` 1.0 where the highest-scoring eligible RM is right, else 0.0 (also where no RM is eligible)."""
    choice = np.where(eligible, scores, -np.inf).argmax(axis=1)
    picked = right[np.arange(len(choice)), choice]
    return (picked & eligible.any(axis=1)).astype(float)


def rm_right_probabilities(
    features: np.ndarray, right: np.ndarray, eligible: np.ndarray, test_features: np.ndarray, C: float
) -> np.ndarray:
    """`[T, N]`: per RM, a logistic model of "right" fitted on the rows it judged; an RM right on all of them or on
    none gets that constant rate, and one that judged none 0.5."""
    probabilities = np.full((len(test_features), right.shape[1]), 0.5)
    for n in range(right.shape[1]):
        rows = eligible[:, n]
        labels = right[rows, n]
        if labels.size and labels.min() == labels.max():
            probabilities[:, n] = float(labels[0])
        elif labels.size:
            model = LogisticRegression(C=C, max_iter=1000).fit(features[rows], labels)
            probabilities[:, n] = model.predict_proba(test_features)[:, 1]
    return probabilities


def one_hot(labels: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """`[len(labels), len(vocabulary)]`; a label outside the vocabulary is a row of zeros."""
    index = {label: i for i, label in enumerate(vocabulary)}
    encoded = np.zeros((len(labels), len(vocabulary)))
    for row, label in enumerate(labels):
        if label in index:
            encoded[row, index[label]] = 1.0
    return encoded


def label_probabilities(
    features: np.ndarray, labels: Sequence[str], test_features: np.ndarray, C: float
) -> tuple[list[str], np.ndarray]:
    """The labels of training, sorted, and `[T, len(labels)]` a logistic classifier's probabilities of each on the test
    rows (1 for the only label, if training has one)."""
    vocabulary = sorted(set(labels))
    if len(vocabulary) == 1:
        return vocabulary, np.ones((len(test_features), 1))
    model = LogisticRegression(C=C, max_iter=1000).fit(features, labels)
    return list(model.classes_), model.predict_proba(test_features)


def label_accuracies(labels: Sequence[str], vocabulary: Sequence[str], right: np.ndarray, eligible: np.ndarray):
    """`[len(vocabulary), N]`: each RM's accuracy on the rows of each label it could judge (0 where it judged none)."""
    labels = np.asarray(labels)
    table = np.zeros((len(vocabulary), right.shape[1]))
    for t, label in enumerate(vocabulary):
        rows = labels == label
        judged = eligible[rows].sum(axis=0)
        table[t] = np.where(judged > 0, (right[rows] & eligible[rows]).sum(axis=0) / np.maximum(judged, 1), 0.0)
    return table


def fold_credits(data: ProbeData, train: np.ndarray, test: np.ndarray, C: float) -> dict[str, np.ndarray]:
    """Each method's `[len(test)]` credit on the test rows, every method fitted on the train rows alone."""
    right, eligible, features = data.right, data.eligible, data.features
    domains, sources = np.asarray(data.domains), np.asarray(data.sources)
    test_right, test_eligible = right[test], eligible[test]

    train_right, train_eligible = torch.from_numpy(right[train]), torch.from_numpy(eligible[train])
    routing = DataLabelRouting.fit(list(domains[train]), list(sources[train]), train_right, train_eligible)

    def credit(scores: np.ndarray) -> np.ndarray:
        return routed_credit(scores, test_right, test_eligible)

    def lookup(test_domains: Sequence[str], test_sources: Sequence[str]) -> np.ndarray:
        routed = routing.route(list(test_domains), list(test_sources), torch.from_numpy(test_eligible)).numpy()
        picked = test_right[np.arange(len(routed)), routed.clip(min=0)]
        return (picked & (routed >= 0)).astype(float)

    single_rank = rank_rms(train_right, train_eligible)
    single_scores = -np.array([single_rank.index(n) for n in range(right.shape[1])], dtype=float)
    vocabulary = sorted(set(domains[train]))
    labelled = np.hstack([features, LABEL_SCALE * one_hot(list(domains), vocabulary)])
    classes, probabilities = label_probabilities(features[train], list(domains[train]), features[test], C)
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]
    accuracies = label_accuracies(domains[train], classes, right[train], eligible[train])
    return {
        SINGLE: credit(np.broadcast_to(single_scores, test_right.shape)),
        MAJORITY: majority_vote_credit(torch.from_numpy(data.margins[test])).numpy(),
        LOOKUP: lookup(domains[test], sources[test]),
        PER_PAIR: credit(rm_right_probabilities(features[train], right[train], eligible[train], features[test], C)),
        PER_PAIR_LABEL: credit(
            rm_right_probabilities(labelled[train], right[train], eligible[train], labelled[test], C)
        ),
        TWO_STAGE: lookup(predicted, [""] * len(test)),
        TASK_MIXTURE: credit(probabilities @ accuracies),
        CEILING: (test_right & test_eligible).any(axis=1).astype(float),
    }


def cross_validate(data: ProbeData, folds: int, repeats: int, seed: int, C: float) -> dict[str, np.ndarray]:
    """Each method's `[repeats, P]` credit: every pair scored once per repeat, by a model that never saw its prompt."""
    groups = len(set(data.groups))
    if groups < folds:
        raise ValueError(f"{folds} folds need at least {folds} distinct prompts, the behaviour data has {groups}")
    credits = {method: np.zeros((repeats, len(data.groups))) for method in METHODS}
    splits = [
        (repeat, train, test)
        for repeat in range(repeats)
        for train, test in GroupKFold(folds, shuffle=True, random_state=seed + repeat).split(
            data.features, groups=data.groups
        )
    ]
    # One BLAS thread: each fold's fits are small, and threads that wait on each other (or on a torch job beside
    # them) made a 30-second probe take twelve minutes on 2 cores.
    with threadpool_limits(limits=1):
        for repeat, train, test in tqdm(splits, desc=f"probe ({repeats} x {folds} folds)", unit="fold"):
            for method, values in fold_credits(data, train, test, C).items():
                credits[method][repeat, test] = values
    return credits


def probe_data(records: Sequence[BehaviourRecord], rm_names: Sequence[str], features: np.ndarray) -> ProbeData:
    """The probe's view of `records` with their `[P, F]` pair features."""
    margins = np.array([[record.margin[name] for name in rm_names] for record in records], dtype=float)
    return ProbeData(
        features=features,
        right=np.array([[record.agree[name] for name in rm_names] for record in records], dtype=bool),
        eligible=np.array([[record.eligible[name] for name in rm_names] for record in records], dtype=bool),
        margins=margins,
        domains=[record.pair.domain for record in records],
        sources=[record.pair.source for record in records],
        groups=[as_text(record.pair.prompt) for record in records],
    )


def frozen_pair_features(
    records: Sequence[BehaviourRecord], encoder: str, pooling: str, max_length: int, batch: int = 256
) -> np.ndarray:
    """`[P, 2H]` pair features of a frozen encoder, through the embedding store the offline router's fits fill."""
    text_encoder = build_text_encoder(encoder, pooling, max_length)
    store = EmbeddingStore.for_encoder(encoder, pooling, max_length, weight_fingerprint(text_encoder))
    cache = EmbeddingCache(store)
    texts = [pair_text(record.pair.prompt, record.pair.chosen) for record in records]
    texts += [pair_text(record.pair.prompt, record.pair.rejected) for record in records]
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch), desc="pair features", unit="batch"):
            chunks.append(cache.lookup(texts[start : start + batch], text_encoder.encode).cpu())
    cache.flush()
    embeddings = torch.cat(chunks).float()
    return pair_features(embeddings[: len(records)], embeddings[len(records) :]).numpy()


def probe_report(credits: dict[str, np.ndarray], data: ProbeData, rm_names: Sequence[str], notes: str) -> str:
    """The probe's markdown: each method's accuracy over repeats and per label, and its paired gap to the lookup."""
    labels = sorted(set(data.domains))
    per_pair = {method: values.mean(axis=0) for method, values in credits.items()}  # each pair's right-share
    lookup = per_pair[LOOKUP]
    header = "| method | accuracy | vs lookup (paired) | " + " | ".join(labels) + " |"
    rows = [header, "|---|---:|---|" + "---:|" * len(labels)]
    domains = np.asarray(data.domains)
    for method in METHODS:
        by_repeat = 100 * credits[method].mean(axis=1)
        if method == LOOKUP:
            versus = "(the lookup)"
        else:
            test = paired_test(per_pair[method].tolist(), lookup.tolist())
            versus = f"{100 * test.mean:+.1f} ± {100 * test.se:.1f}, {test.verdict()}"
        cells = "".join(f" {100 * per_pair[method][domains == label].mean():.1f} |" for label in labels)
        rows.append(f"| {method} | {by_repeat.mean():.1f} ± {by_repeat.std():.1f} | {versus} |{cells}")
    counts = ", ".join(f"{label} {int((domains == label).sum())}" for label in labels)
    beyond = paired_test(per_pair[PER_PAIR_LABEL].tolist(), lookup.tolist())
    label_free = paired_test(per_pair[TASK_MIXTURE].tolist(), lookup.tolist())
    reading = (
        f"- **Beyond the label:** the lookup plus a per-pair residual is {100 * beyond.mean:+.1f} ± "
        f"{100 * beyond.se:.1f} points against the lookup ({beyond.verdict()}, p = {beyond.p_value:.3f}).\n"
        f"- **Without the label:** the task mixture, which reads no label, is {100 * label_free.mean:+.1f} "
        f"± {100 * label_free.se:.1f} points against the lookup that reads it ({label_free.verdict()}, "
        f"p = {label_free.p_value:.3f}).\n"
        f"- **Headroom:** the ceiling is {100 * per_pair[CEILING].mean():.1f}, the lookup {100 * lookup.mean():.1f}: "
        "what per-pair routing could gain if it could tell, pair by pair, which RM is right."
    )
    return (
        f"{notes}\n\n- **Pairs:** {len(domains)} ({counts}), {len(set(data.groups))} distinct prompts; RMs "
        f"{list(rm_names)}.\n- **Accuracy** is mean ± sd over repeats; a pair no RM can judge counts as wrong; "
        "majority vote's tie is half right. *vs lookup* is the mean gap over pairs of each pair's right-share "
        "(averaged over repeats), ± its standard error, and the paired test's verdict at p < 0.05.\n\n"
        + "\n".join(rows)
        + f"\n\n{reading}\n"
    )


def run_probe(
    behaviour: Path,
    output: Path,
    rm_names: list[str] | None = None,
    encoder: str = "all-minilm-l6-v2",
    pooling: str = "mean",
    max_length: int = 256,
    folds: int = 10,
    repeats: int = 5,
    seed: int = 0,
    C: float = 1.0,
) -> None:
    """Cross-validates routing methods on a behaviour file: how much per-pair routing learns beyond the data label.

    Args:
        behaviour: A behaviour file (`python cli.py collect`) or a shipped set's folder.
        output: The markdown report to write.
        rm_names: The RMs to route among, in this order; None: all of the file's.
        encoder: The frozen text encoder of the pair features (the offline router's, to share its embedding store).
        pooling: How its token states become one vector: `mean` or `last_token`.
        max_length: Tokens per prompt+response text; longer texts lose the start of the prompt.
        folds: Cross-validation folds, grouped by prompt.
        repeats: Reshuffled cross-validations; the spread over them is the reported sd.
        seed: The first repeat's fold seed (repeat `r` uses `seed + r`).
        C: Inverse L2 strength of every logistic model (scikit-learn's `C`).
    """
    if folds < 2 or repeats < 1 or not C > 0:
        raise ValueError(f"need folds >= 2, repeats >= 1 and C > 0, got {folds}, {repeats} and {C}")
    names = list(rm_names) if rm_names is not None else rm_names_of(behaviour)
    records = read_behaviour(behaviour, names, exact=False)
    log.info("%s: %d pairs, RMs %s", behaviour, len(records), names)
    data = probe_data(records, names, frozen_pair_features(records, encoder, pooling, max_length))
    credits = cross_validate(data, folds, repeats, seed, C)
    given = {"rm_names": rm_names, "encoder": encoder, "pooling": pooling, "max_length": max_length, "folds": folds,
             "repeats": repeats, "seed": seed, "C": C}  # fmt: skip
    defaults = {name: parameter.default for name, parameter in inspect.signature(run_probe).parameters.items()}
    options = "".join(
        f" --{key} '[{', '.join(value)}]'" if key == "rm_names" else f" --{key} {value}"
        for key, value in given.items()
        if value != defaults[key]
    )
    notes = (
        f"# What routing can learn beyond the label: `{behaviour}`\n\nWritten by `python cli.py probe --behaviour "
        f"{behaviour} --output {output}{options}` ({describe_machine()}); do not edit by hand. The method is in "
        f"`rmrouter/behaviour/probe.py`: features `[e + e'; |e - e'|]` of the frozen `{encoder}` ({pooling} "
        f"pooling, {max_length} tokens), {repeats} x {folds}-fold cross-validation grouped by prompt, logistic "
        f"models with C = {C}; the label is the pair's domain."
    )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(probe_report(credits, data, names, notes), encoding="utf-8")
    log.info("wrote %s", output)
