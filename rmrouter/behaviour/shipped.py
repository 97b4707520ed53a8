"""Shipped behaviour sets: collected records kept in the repository, so router experiments start in seconds.

Collecting the large set takes about an hour on 2 CPU cores; its records are shipped instead, in a folder:

    manifest.json     what made it: the collection's pool and data sources (class paths and arguments), the RM
                      names, each collection run (command, commit, machine, dtypes, seconds), the tolerance a
                      recollection must meet, and the checksum of every file
    scores.jsonl.gz   one line per pair, in collection order: `{"id": ..., "scores": {rm: [chosen, rejected] | null}}`
    heads/            the learned RMs' heads the scores came from (head weights and hyperparameters only), so the
                      pool can be rebuilt exactly and any row scored again (`shipped_pool`)
    README.md         the same for people, written by `python cli.py ship` with the rest

The texts are not stored: they are the vendored kit's, and the manifest's data sources rebuild the pairs, joined to
the scores by pair id. Every reader of behaviour files (`read_behaviour`, the offline router's DataModule, `table`,
the benchmarks) takes the folder in place of a `.jsonl` file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from rmrouter.commands import instantiate
from rmrouter.data.behaviour import BehaviourRecord, read_behaviour
from rmrouter.data.jsonl import DataError
from rmrouter.data.sources import PreferenceSource
from rmrouter.models.embedding_store import FINGERPRINT_KEY

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCORES = "scores.jsonl.gz"
HEADS = "heads"
FORMAT = 1
# What a LearnedRewardModel needs of a Lightning checkpoint: the head and how to rebuild its frozen encoder.
HEAD_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version", FINGERPRINT_KEY)
LEARNED_RM = "rmrouter.reward_models.LearnedRewardModel"


def is_shipped(path: str | Path) -> bool:
    """Whether `path` is a shipped behaviour set (a folder with a manifest) rather than a behaviour file."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: shipped-set format {manifest.get('format')!r}, this rmrouter reads {FORMAT}")
    return manifest


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_sources(folder: str | Path) -> list[PreferenceSource]:
    """The manifest's data sources: the collection's, which rebuild its pairs from the vendored kit."""
    return instantiate(read_manifest(folder)["data"], list[PreferenceSource])


def shipped_pool(folder: str | Path, pin_dtypes: bool = True):
    """The collection's pool, its learned RMs loaded from the shipped heads. With `pin_dtypes`, an RM whose config
    chooses its dtype (e.g. `bfloat16_if_native`) gets the one the collection's first run recorded, so a machine of
    another CPU kind scores in the same precision."""
    from rmrouter.reward_models.pool import RewardModelPool

    folder = Path(folder)
    manifest = read_manifest(folder)
    spec = json.loads(json.dumps(manifest["pool"]))  # a copy to change
    used = manifest["runs"][0]["dtypes"]
    for rm in spec["init_args"]["reward_models"]:
        init_args = rm.setdefault("init_args", {})
        if rm["class_path"] == LEARNED_RM:
            init_args["checkpoint"] = str(folder / init_args["checkpoint"])
        if pin_dtypes and "dtype" in init_args and used.get(init_args["name"], "none") != "none":
            init_args["dtype"] = used[init_args["name"]]
    return instantiate(spec, RewardModelPool)


def read_shipped(folder: str | Path) -> list[BehaviourRecord]:
    """Every record of a shipped set, in collection order: its scores joined to the pairs its sources rebuild."""
    from rmrouter.behaviour.collect import load_pairs

    folder = Path(folder)
    manifest = read_manifest(folder)
    scores_path = folder / SCORES
    if file_sha256(scores_path) != manifest["files"][SCORES]:
        raise DataError(f"{scores_path}: its checksum is not the manifest's: the file was changed after shipping")
    pairs = {pair.id: pair for pair in load_pairs(shipped_sources(folder))}
    records = []
    with gzip.open(scores_path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            row = json.loads(line)
            pair = pairs.get(row["id"])
            if pair is None:
                raise DataError(
                    f"{scores_path}:{line_number}: pair '{row['id']}' is not among the pairs the manifest's sources "
                    "give: the vendored data or a loader changed since the set was shipped; collect it again"
                )
            try:
                records.append(BehaviourRecord.from_dict({**pair.to_dict(), **row, "agree": _agree(row["scores"])}))
            except ValueError as error:
                raise DataError(f"{scores_path}:{line_number}: {error}") from None
    if len(records) != manifest["pairs"]:
        raise DataError(f"{scores_path}: {len(records)} rows, the manifest says {manifest['pairs']}")
    return records


def _agree(scores: dict[str, Any]) -> dict[str, bool]:
    return {name: value is not None and value[0] > value[1] for name, value in scores.items()}


def ship(behaviour_config: Path, output: Path, tolerance: float = 0.1, note: str | None = None) -> None:
    """Ships the behaviour file a `collect` config wrote: its scores, the pool and data that made them, its learned
    RMs' heads, and the record of the runs that collected it, into the folder `output`.

    Args:
        behaviour_config: The `collect` config (e.g. `configs/behaviour_large.yaml`); its `output` is the file.
        output: The shipped set's folder (e.g. `rmrouter/shipped/behaviour_large`); replaced whole.
        tolerance: The largest score difference a recollection of a row may show (a different CPU kind or batch
            rounds bfloat16 differently); margins within it of 0 are near-ties whose sign may flip.
        note: What the runs' record cannot know, for the README (e.g. that other jobs shared the machine).
    """
    from rmrouter.behaviour.collect import load_pairs, runs_path

    config, output = Path(behaviour_config), Path(output)
    spec = yaml.safe_load(config.read_text(encoding="utf-8"))
    behaviour = Path(spec["output"])
    pool_spec = yaml.safe_load((config.parent / spec["pool"]).read_text(encoding="utf-8"))
    records = read_behaviour(behaviour)
    pairs = load_pairs(instantiate(spec["data"], list[PreferenceSource]))
    if [record.pair for record in records] != pairs:
        raise DataError(
            f"{behaviour} does not hold exactly the pairs of {config}, in order ({len(records)} records, "
            f"{len(pairs)} pairs): finish the collection (`python cli.py collect --config {config}`) first"
        )
    runs = json.loads(runs_path(behaviour).read_text(encoding="utf-8"))
    if sum(run["pairs"] for run in runs) != len(records):
        raise DataError(f"{runs_path(behaviour)} records {sum(r['pairs'] for r in runs)} scored pairs, not all "
                        f"{len(records)}: collect the file again from empty, so every run is recorded")  # fmt: skip
    if output.exists():
        shutil.rmtree(output)
    (output / HEADS).mkdir(parents=True)
    for rm in pool_spec["init_args"]["reward_models"]:
        if rm["class_path"] == LEARNED_RM:
            head = Path(HEADS) / f"{rm['init_args']['name']}.ckpt"
            _save_head(Path(rm["init_args"]["checkpoint"]), output / head)
            rm["init_args"]["checkpoint"] = str(head)
    with gzip.GzipFile(output / SCORES, "wb", mtime=0) as handle:  # no timestamp: the same records, the same bytes
        for record in records:
            line = {"id": record.pair.id, "scores": record.to_dict()["scores"]}
            handle.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
    manifest = {
        "format": FORMAT,
        "config": str(config),
        "pairs": len(records),
        "rm_names": list(records[0].scores),
        "pool": pool_spec,
        "data": spec["data"],
        "tolerance": tolerance,
        "note": note,
        "runs": runs,
        "files": {str(path.relative_to(output)): file_sha256(path) for path in sorted(output.rglob("*.*"))},
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    command = shlex.join(["python", "cli.py", "ship", "--behaviour_config", str(config), "--output", str(output),
                          "--tolerance", str(tolerance), *(["--note", note] if note else [])])  # fmt: skip
    (output / "README.md").write_text(readme(manifest, records, command, output), encoding="utf-8")
    log.info("shipped %d records of %s into %s", len(records), behaviour, output)


def readme(manifest: dict[str, Any], records: list[BehaviourRecord], command: str, folder: Path) -> str:
    """The shipped set's README: what is in it, what made it, how to read it and how a recollection must match."""
    domains: dict[tuple[str, str], int] = {}
    for record in records:
        key = (record.pair.source, record.pair.domain)
        domains[key] = domains.get(key, 0) + 1
    rows = "\n".join(f"| {source} | {domain} | {count} |" for (source, domain), count in domains.items())
    runs = "\n".join(
        f"| {i} | `{run['command']}` | `{run['commit']}` | {run['machine']} | {run['batch_size']} | {run['pairs']} | "
        f"{run['wall_seconds'] / 60:.1f} | {', '.join(f'{n} {s:.0f}' for n, s in run['seconds'].items())} |"
        for i, run in enumerate(manifest["runs"], start=1)
    )
    dtypes = ", ".join(f"{name} {dtype}" for name, dtype in manifest["runs"][0]["dtypes"].items())
    note = f"\n{manifest['note']}\n" if manifest.get("note") else ""
    files = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in manifest["files"].items())
    return f"""# Shipped behaviour set: `{folder.name}`

Written by `{command}`; do not edit by hand.

{manifest["pairs"]:,} labelled pairs of the vendored kit, each side scored by every RM of the pool of
`{manifest["config"]}` ({", ".join(manifest["rm_names"])}), so the offline router, the routing benchmark and the
pool tables run from the repository in seconds instead of an hour of collection. Only pair ids and scores are stored:
the manifest's data sources rebuild each pair from `rmrouter/vendor/` and join it by id.

| source | domain | pairs |
|---|---|---:|
{rows}

## How it was collected

| run | command | commit | machine | pairs a batch | pairs | minutes | seconds per RM |
|---|---|---|---|---:|---:|---:|---|
{runs}
{note}
Each RM computed in: {dtypes}. The learned RMs' heads are in `heads/` (their encoder is rebuilt from its name and
checked against the fingerprint saved with the head), so `rmrouter.behaviour.shipped.shipped_pool` rebuilds the exact
pool.

## Reading it

Every reader of behaviour files takes this folder in place of a `.jsonl` file:

    python cli.py table --behaviour {folder} --output table.md
    python cli.py fit --config configs/offline_router.yaml --data.init_args.path {folder}
    python -c "from rmrouter.data.behaviour import read_behaviour; print(len(read_behaviour('{folder}')))"

## What a recollection must match

Scores of a row collected again, on another machine or in another batch, may differ by up to {manifest["tolerance"]}
(bfloat16 rounds differently between CPU kinds and batch shapes; float32 and exact RMs differ far less), and the sign
of every margin must agree except where either margin lies within that tolerance of 0 (a near-tie).
`tests/test_shipped_behaviour.py` scores a slice again on the machine it runs on and checks both.

## Files

| file | sha256 |
|---|---|
{files}
"""


def _save_head(checkpoint: Path, target: Path) -> None:
    """A learned RM's checkpoint cut to what scoring needs: no optimizer state, loops or callbacks."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({key: content[key] for key in HEAD_KEYS if key in content}, target)
