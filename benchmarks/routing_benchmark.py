"""The online routing benchmark: every router and ablation on simulated streams of held-out pairs, over seeds.

    python benchmarks/routing_benchmark.py --behaviour rmrouter/shipped/behaviour_large \
        --priors checkpoints/offline_router_seeds_large --seeds 0 1 2 3 4 --output docs/routing_benchmark.md

The stream is the `test` and `ood` splits of the offline router's config (pairs no prior trained or was selected on),
in reshuffled passes until it has `--pairs` pairs. Seed `s` fixes the stream's order and side flips, the routers' own
generators, and which prior the prior-based routers load (`--priors DIR` holds `seed_<s>/prior.pt`, as
`benchmarks/offline_router_seeds.py --out-dir DIR` writes them; `--prior FILE` gives every seed one prior). Every
method of a seed routes the very same batches, so outcomes pair row by row. Three fidelities (rmrouter.simulation):
`oracle` (the loss is whether the label is wrong), `log_linear_dpo` (a log-linear DPO policy over the frozen
MiniLM embeddings of each side, whose per-pair loss before its update is the reward) and `lm_dpo` (the LM policy of
`--lm-config`, SmolLM2 with LoRA, trained by DPO on the routed labels: about 25 s a step on 2 CPU cores, so it runs
`--lm-methods` on a shorter stream of `--lm-pairs`). At `lm_dpo` the methods whose routing reads no reward
(`REWARD_FREE`) are routed with the oracle learner: their labels are the same whatever the learner (the suite checks
it), so the LM's minutes go to the routers that learn.

Routers are built from `configs/routers/*.yaml` with the seed's prior and generator seed; the ablations of the
switches override one key of `bayesian.yaml`. `prior_scale: calibrated` is the seed's prior's own `reward_scale`,
which the offline fit writes from its validation split (`rmrouter.routers.calibration.fit_prior_scale`). The
task-space router (`task_bayesian.yaml`) reads the task-aware offline router's priors (`--task-priors DIR`,
`seed_<s>/prior.pt`) and has its own ablations. Each run's log is kept under `--runs-dir` (one folder per report)
and reused while its stream, router, prior file and length are the same, so an interrupted benchmark resumes;
`routing_report.py` turns the logs into the report.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from routing_report import write_benchmark_report

from rmrouter.behaviour.shipped import file_sha256
from rmrouter.data.behaviour_datamodule import BehaviourDataModule
from rmrouter.data.behaviour_split import split_named_by
from rmrouter.models.embedding_store import EmbeddingCache
from rmrouter.reward_models._hf import native_bfloat16
from rmrouter.routers.baseline_routers import DataLabelRouter
from rmrouter.routers.embedding import LazyEmbedder
from rmrouter.simulation import LogLinearDPO, OracleLearner, PairStream, reward_auroc, run_stream, stream_summary
from rmrouter.simulation.lm_learner import LMPolicyDPO

log = logging.getLogger("routing_benchmark")
ROOT = Path(__file__).resolve().parents[1]
ROUTERS = ROOT / "configs" / "routers"
FIDELITIES = ("oracle", "log_linear_dpo", "lm_dpo")
# Routers whose labels never depend on the losses they observe: the same at every fidelity of one stream.
REWARD_FREE = (
    "single_best", "random", "majority", "uwo", "data_label", "no_online", "task_no_online", "task_label_free_no_online"
)  # fmt: skip

# (key, label, router config, overrides of its init_args); `single_best` and `data_label` are fitted on `train`. A
# config `a.yaml+b.yaml` is `b.yaml` overlaid on `a.yaml`, as `--config a.yaml --config b.yaml` composes them.
METHODS: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("single_best", "best single RM (on train)", "single.yaml", {}),
    ("random", "random RM", "random.yaml", {}),
    ("majority", "majority vote (all RMs)", "majority.yaml", {}),
    ("uwo", "UWO (all RMs)", "uwo.yaml", {}),
    ("data_label", "routing by data label", None, {}),
    ("laser", "LASER", "laser.yaml", {}),
    ("laser_code", "LASER, LASeR's code ([0, 1] rewards, no round robin)", "laser.yaml",
     {"round_robin": False, "centred_rewards": False}),
    ("bayesian", "BayesianRouter", "bayesian.yaml", {}),
    ("bayesian_paper", "BayesianRouter, the paper's form", "bayesian.yaml+bayesian_variants/paper_form.yaml", {}),
    ("no_online", "- online updates", "bayesian.yaml+bayesian_variants/no_online_updates.yaml", {}),
    ("no_prior", "- offline prior", "bayesian.yaml+bayesian_variants/no_prior.yaml", {}),
    ("weighted_score", "weighted score instead of prior injection",
     "bayesian.yaml+bayesian_variants/weighted_score.yaml", {}),
    ("scale_one", "- calibrated prior scale (c = 1)", "bayesian.yaml", {"prior_scale": 1.0}),
    ("placeholder", "- held warm-up rewards (placeholders)", "bayesian.yaml", {"warmup_rewards": "placeholder"}),
    ("uncentred", "- centred rewards ([0, 1])", "bayesian.yaml", {"centred_rewards": False}),
    ("any_rm", "- eligible RMs only", "bayesian.yaml", {"eligible_only": False}),
    ("task", "TaskBayesianRouter", "task_bayesian.yaml", {}),
    ("task_label_free", "TaskBayesianRouter without labels", "task_bayesian.yaml", {"use_labels": False}),
    ("task_no_online", "TaskBayesianRouter - online updates", "task_bayesian.yaml", {"online_updates": False}),
    ("task_label_free_no_online", "TaskBayesianRouter without labels - online updates (the label-free lookup)",
     "task_bayesian.yaml", {"use_labels": False, "online_updates": False}),
    ("task_no_prior", "TaskBayesianRouter - offline prior", "task_bayesian.yaml", {"use_prior": False, "lambda0": 1.0}),
    ("task_fixed_strength", "TaskBayesianRouter, prior strength 25 per cell", "task_bayesian.yaml", {"lambda0": 25.0}),
]  # fmt: skip


class Benchmark:
    """The data every run of one benchmark shares: the splits, the stream, the embedding caches."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        offline = yaml.safe_load(Path(args.offline_config).read_text())["data"]["init_args"]
        self.rm_names = list(offline["rm_names"])
        data = BehaviourDataModule(str(args.behaviour), self.rm_names, split_named_by(args.offline_config))
        data.setup("fit")
        self.splits = data.splits
        self.data_label = data.data_label_routing
        self.stream = PairStream([*data.splits["test"].records, *data.splits["ood"].records], self.rm_names)
        train = data.splits["train"]
        # A single RM labels every pair or none: it is chosen by its accuracy over all train pairs, a pair it cannot
        # judge counting as no label (its accuracy on the pairs it can judge would pick an RM that abstains on most).
        self.best_single = self.rm_names[int(train.agree.mean(dim=0).argmax())]
        self.caches: dict[str, EmbeddingCache] = {}

    def prior_path(self, seed: int, task: bool = False) -> str:
        """The seed's prior of the paper's router, or of the task-aware router (`--task-priors`) for `task`."""
        if task:
            return str(Path(self.args.task_priors) / f"seed_{seed}" / "prior.pt")
        if self.args.prior is not None:
            return str(self.args.prior)
        return str(Path(self.args.priors) / f"seed_{seed}" / "prior.pt")

    def share_cache(self, embedder: LazyEmbedder) -> LazyEmbedder:
        """Gives `embedder` the one embedding cache of its encoder, so every run embeds each text once."""
        key = f"{embedder.encoder_name}|{embedder.pooling}|{embedder.max_length}"
        embedder.cache = self.caches.setdefault(key, EmbeddingCache())
        return embedder

    def router(self, key: str, config: str | None, overrides: dict[str, Any], seed: int):
        """The router of a method for a seed, and the arguments it was built with (kept in the run's file)."""
        if key == "data_label":
            return DataLabelRouter(self.rm_names, self.data_label), {"top_rm": self.data_label.describe(self.rm_names)}
        files = [ROUTERS / part for part in config.split("+")]
        layers = [yaml.safe_load(path.read_text())["model"]["init_args"]["router"] for path in files]
        module, name = layers[0]["class_path"].rsplit(".", 1)
        # the router files take the pool's RM names from the module that routes with them; here, the behaviour file's
        init_args = {"rm_names": self.rm_names}
        for layer in layers:
            init_args.update(layer["init_args"])
        init_args.update(overrides)
        if key == "single_best":
            init_args["rm"] = self.best_single
        if "seed" in init_args:
            init_args["seed"] = seed
        if init_args.get("prior_path") is not None:
            init_args["prior_path"] = self.prior_path(seed, task=name == "TaskBayesianRouter")
        if "encoder" in init_args and self.args.encoder is not None:
            init_args["encoder"] = self.args.encoder
        built = getattr(importlib.import_module(module), name)(**init_args)
        if getattr(built, "embedder", None) is not None:
            self.share_cache(built.embedder)
        if init_args.get("prior_scale") == "calibrated":
            init_args["prior_scale"] = built.prior_scale  # the prior's reward_scale, as the report shows it
        return built, init_args

    def learner(self, fidelity: str, seed: int):
        if fidelity == "oracle":
            return OracleLearner()
        if fidelity == "lm_dpo":
            return self.lm_learner(seed)
        encoder = self.args.encoder or "all-minilm-l6-v2"
        features = self.share_cache(LazyEmbedder(encoder, "mean", 256, None, None))
        dim = features.texts(["x"]).shape[1]
        return LogLinearDPO(features.texts, dim, beta=0.1, learning_rate=self.args.learning_rate)

    def lm_learner(self, seed: int) -> LMPolicyDPO:
        """The simulated online config's policy, LoRA, loss and truncation, in bf16 autocast where it is native."""
        model = yaml.safe_load(Path(self.args.lm_config).read_text())["model"]["init_args"]
        return LMPolicyDPO(
            policy=self.args.lm_policy or model["policy"],
            lora=model["lora"],
            beta=model["beta"],
            loss_type=model["loss_type"],
            learning_rate=model["optimizer"]["init_args"]["lr"],
            max_prompt_length=model["max_prompt_length"],
            max_new_tokens=model["max_new_tokens"],
            bfloat16=native_bfloat16(),
            seed=seed,
        )


def fidelity_methods(args: argparse.Namespace, fidelity: str) -> list[str]:
    """The methods run at `fidelity`: all asked for, but at `lm_dpo` only `--lm-methods` and the reward-free ones."""
    if fidelity != "lm_dpo":
        return list(args.methods)
    return [key for key in args.methods if key in args.lm_methods or key in REWARD_FREE]


def file_digest(path: str | None) -> str | None:
    """A file's SHA-256 prefix, or None when there is no such file."""
    if path is None or not Path(path).is_file():
        return None
    return file_sha256(Path(path))[:16]


def run_identity(bench: Benchmark, fidelity: str, key: str, router_args: dict[str, Any], pairs: int, seed: int):
    """What a run's outcome depends on besides the code: a saved run is reused only where this is the same."""
    ids = "\n".join(record.pair.id for record in bench.stream.records)
    return {
        "stream": hashlib.sha256(ids.encode()).hexdigest()[:16], "rm_names": bench.rm_names, "fidelity": fidelity,
        "method": key, "router": router_args, "prior": file_digest(router_args.get("prior_path")), "pairs": pairs,
        "batch_size": bench.args.batch_size, "seed": seed,
    }  # fmt: skip


def reusable(saved: dict[str, Any], identity: dict[str, Any], stream_size: int) -> bool:
    """A saved run fits this one: the same identity, or for a file written before runs kept one (no `identity`), the
    same router arguments (its RMs, prior path) and a log of this run's length whose rows all lie in this stream."""
    if "identity" in saved:
        return saved["identity"] == identity
    rows = saved["log"]["row"]
    fits = len(rows) == identity["pairs"] and (not rows or max(rows) < stream_size)
    return fits and saved.get("router") == identity["router"]


def run_one(bench: Benchmark, fidelity: str, key: str, config, overrides, seed: int) -> dict[str, Any]:
    path = bench.args.runs_dir / fidelity / key / f"seed_{seed}.json"
    lm = fidelity == "lm_dpo"
    learner_kind = "oracle" if lm and key in REWARD_FREE else fidelity
    pairs = bench.args.lm_pairs if lm else bench.args.pairs
    router, router_args = bench.router(key, config, overrides, seed)
    identity = run_identity(bench, fidelity, key, router_args, pairs, seed)
    if path.is_file():
        saved = json.loads(path.read_text())
        if reusable(saved, json.loads(json.dumps(identity)), len(bench.stream)):
            return saved
        log.warning("%s: saved for another stream, router, prior or length: run again", path)
    learner = bench.learner(learner_kind, seed)
    started = time.perf_counter()
    stream_log = run_stream(router, bench.stream, learner, pairs, bench.args.batch_size, seed, progress=True)
    result = {
        "identity": identity,
        "router": router_args,
        "learner": learner_kind,
        "seconds": time.perf_counter() - started,
        "summary": stream_summary(stream_log, bench.stream),
        "auroc": reward_auroc(stream_log, bench.args.window),
        "log": stream_log.to_dict(),
    }
    if isinstance(learner, LogLinearDPO):  # the policy's implicit reward against the true labels, once per pair
        every = next(bench.stream.batches(len(bench.stream), len(bench.stream), seed))
        result["summary"]["policy_agreement"] = float(learner.agreement(every).double().mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    log.info("%s %s seed %d: accuracy %.3f", fidelity, key, seed, result["summary"]["accuracy"])
    return result


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """What a `Benchmark` is built from: the behaviour file, its offline split's config, the seeds and their priors."""
    parser.add_argument("--behaviour", type=Path, default=Path("rmrouter/shipped/behaviour_large"))
    priors = parser.add_mutually_exclusive_group()
    priors.add_argument("--priors", type=Path, default=Path("checkpoints/offline_router_seeds_large"))
    priors.add_argument("--prior", type=Path, default=None, help="one prior for every seed")
    parser.add_argument(
        "--task-priors", type=Path, default=Path("checkpoints/offline_router_task_seeds_large"),
        help="the task-aware router's priors, seed_<s>/prior.pt (benchmarks/offline_router_seeds.py --config "
        "configs/offline_router_task.yaml --out-dir DIR)",
    )  # fmt: skip
    parser.add_argument("--offline-config", type=Path, default=Path("configs/offline_router.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_arguments(parser)
    parser.add_argument("--pairs", type=int, default=2400, help="pairs per stream (passes repeat the held-out set)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fidelities", nargs="+", choices=FIDELITIES, default=list(FIDELITIES))
    parser.add_argument("--methods", nargs="+", default=[key for key, *_ in METHODS])
    parser.add_argument("--lm-methods", nargs="+", default=["bayesian"], help="reward-reading methods run at lm_dpo")
    parser.add_argument("--lm-pairs", type=int, default=128, help="pairs per stream at lm_dpo")
    parser.add_argument("--lm-config", type=Path, default=Path("configs/online/simulated.yaml"), help="lm_dpo's policy")
    parser.add_argument("--lm-policy", default=None, help="replace that config's policy (tests: a tiny one)")
    parser.add_argument("--window", type=int, default=25, help="steps per window of the reward's AUROC")
    parser.add_argument("--learning-rate", type=float, default=10.0, help="SGD step of the log-linear DPO policy")
    parser.add_argument("--encoder", default=None, help="replace every text encoder (tests: a tiny one)")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="where each run's log is kept and reused; default: checkpoints/<the output's stem>",
    )
    parser.add_argument("--output", type=Path, default=Path("docs/routing_benchmark.md"))
    parser.add_argument("--plots-dir", type=Path, default=None, help="PNG folder; default: beside --output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.runs_dir is None:  # one folder per report, so two benchmarks never share (or reuse) each other's runs
        args.runs_dir = Path("checkpoints") / args.output.stem
    for flag, asked in (("--methods", args.methods), ("--lm-methods", args.lm_methods)):
        unknown = sorted(set(asked) - {key for key, *_ in METHODS})
        if unknown:
            raise SystemExit(f"{flag}: unknown {unknown}; known: {[key for key, *_ in METHODS]}")
    bench = Benchmark(args)
    runs: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for fidelity in args.fidelities:
        keys = fidelity_methods(args, fidelity)
        for key, _, config, overrides in [method for method in METHODS if method[0] in keys]:
            for seed in args.seeds:
                runs.setdefault(fidelity, {}).setdefault(key, {})[seed] = run_one(
                    bench, fidelity, key, config, overrides, seed
                )
    labels = {key: label for key, label, *_ in METHODS}
    write_benchmark_report(args, bench, runs, labels, argv)
    return runs


if __name__ == "__main__":
    main()
