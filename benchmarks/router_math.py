"""The online router's math per routed pair: a Thompson selection and the posterior update, in each form.

    python benchmarks/router_math.py --output docs/router_math.md

Every step routes a batch of `--batch-size` pairs (unit-norm random embeddings `h`, rewards in [0, 1]) over
`--rms` RMs: `thompson_select(h)` then `update(chosen, h, reward)`, in float64 on the CPU, as `BayesianRouter` does.
Forms, each timed from the same prior over the same batches:

- `rank-B` (`GaussianPosteriors(rank_updates=True)`, the default from d = 128 on): the covariance is kept and
  updated by Woodbury's identity on each RM's rows of the batch, re-derived exactly from the precision every
  `refresh_every` updates; a score's variance is one matrix product per RM.
- `refactorise` (`rank_updates=False`, the exact form, the default below d = 128): the precision of every RM an
  update changed is Cholesky-factorised again; a score's variance is a triangular solve per RM.
- `authors` (the paper authors' form): per routed pair and RM, the covariance from the precision, its `eigh`, and a
  whole weight vector drawn from it; then a rank-one update. Timed on `--authors-pairs` pairs only (it is slow).

The floor is the `N d^2` multiply-adds per pair of `h^T Sigma_n h` over `N` RMs, which no form avoids; it is timed as
one batched matrix product on this machine (`floor`). The first step of each form is a warm-up and is not timed;
the figure is the median over `--repeats` runs of `--steps` steps. The default 300 steps take every RM past its first
exact refresh (`refresh_every` = 256 updates), so the rank form's figure carries that cost too.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import write_report

from rmrouter.routers.posterior import GaussianPosteriors


def batches(num_rms: int, dim: int, batch_size: int, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        h = torch.nn.functional.normalize(torch.randn(batch_size, dim, generator=generator, dtype=torch.float64), dim=1)
        out.append((h, torch.rand(batch_size, generator=generator, dtype=torch.float64)))
    return out


def prior(num_rms: int, dim: int, seed: int) -> GaussianPosteriors:
    means = torch.nn.functional.normalize(torch.randn(num_rms, dim, generator=torch.Generator().manual_seed(seed)))
    return GaussianPosteriors.prior(means.double(), lambda0=1.0, sigma2=1.0)


def run_posteriors(posteriors: GaussianPosteriors, work, generator: torch.Generator) -> float:
    """Seconds for the steps of `work` after the first."""
    start = None
    for step, (h, reward) in enumerate(work):
        if step == 1:
            start = time.perf_counter()
        chosen = posteriors.thompson_select(h, generator)
        posteriors.update(chosen, h, reward)
    return time.perf_counter() - start


def run_authors(posteriors: GaussianPosteriors, work, generator: torch.Generator, pairs: int) -> float:
    """Seconds per pair of the authors' form over `pairs` pairs (after one untimed pair)."""
    rows = [(h[i], r[i]) for h, r in work for i in range(len(r))][: pairs + 1]
    precision, vector = posteriors.precision.clone(), posteriors.vector.clone()
    start = None
    for index, (h, reward) in enumerate(rows):
        if index == 1:
            start = time.perf_counter()
        scores = []
        for n in range(precision.shape[0]):
            covariance = torch.linalg.inv(precision[n])
            mean = covariance @ vector[n]
            values, vectors = torch.linalg.eigh(covariance)
            noise = torch.randn(len(values), generator=generator, dtype=values.dtype)
            weights = mean + vectors @ (values.clamp_min(0).sqrt() * noise)
            scores.append(float(h @ weights))
        n = max(range(len(scores)), key=scores.__getitem__)
        precision[n] += torch.outer(h, h) / posteriors.sigma2
        vector[n] += reward * h / posteriors.sigma2
    return (time.perf_counter() - start) / pairs


def floor_seconds(num_rms: int, dim: int, batch_size: int, repeats: int) -> float:
    """Per pair: `h^T Sigma_n h` for every RM as one batched product, the work no form avoids."""
    covariance = torch.eye(dim, dtype=torch.float64).expand(num_rms, dim, dim).contiguous()
    h = torch.randn(batch_size, dim, dtype=torch.float64)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        ((h @ covariance) * h).sum(-1)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / batch_size


def measure(args: argparse.Namespace, dim: int) -> dict[str, float]:
    """Microseconds per pair of each form at `dim`."""
    work = batches(args.rms, dim, args.batch_size, args.steps + 1, seed=0)
    pairs = args.steps * args.batch_size
    result = {}
    for form in ("rank-B", "refactorise"):
        times = []
        for repeat in range(args.repeats):
            posteriors = prior(args.rms, dim, seed=1)
            posteriors.rank_updates = form == "rank-B"
            times.append(run_posteriors(posteriors, work, torch.Generator().manual_seed(repeat)))
        result[form] = 1e6 * statistics.median(times) / pairs
    if dim in args.authors_dims:
        result["authors"] = 1e6 * run_authors(prior(args.rms, dim, 1), work, torch.Generator().manual_seed(0),
                                              args.authors_pairs)  # fmt: skip
    result["floor"] = 1e6 * floor_seconds(args.rms, dim, args.batch_size, 20)
    return result


def table(args: argparse.Namespace, results: dict[int, dict[str, float]]) -> str:
    lines = [
        "| d | rank-B (us / pair) | refactorise (us / pair) | authors' form (us / pair) | floor (us / pair) "
        "| refactorise / rank-B | authors / rank-B |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dim, r in results.items():
        authors = r.get("authors")
        cells = [f"{r['rank-B']:.1f}", f"{r['refactorise']:.1f}", "not run" if authors is None else f"{authors:,.0f}",
                 f"{r['floor']:.1f}", f"{r['refactorise'] / r['rank-B']:.1f}x",
                 "" if authors is None else f"{authors / r['rank-B']:,.0f}x"]  # fmt: skip
        lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 384, 576])
    parser.add_argument("--rms", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--authors-dims", type=int, nargs="*", default=[576])
    parser.add_argument("--authors-pairs", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path("docs/router_math.md"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    args = parse(argv)
    results = {dim: measure(args, dim) for dim in args.dims}
    notes = (
        f"\n{args.rms} RMs, batches of {args.batch_size} pairs, {args.steps} timed steps (median of {args.repeats} "
        f"runs); the authors' form on {args.authors_pairs} pairs at d = {args.authors_dims}. float64, "
        f"{torch.get_num_threads()} threads. Each figure is microseconds per routed pair: one Thompson selection and "
        "its share of the batch's posterior update. `floor` is `h^T Sigma_n h` over every RM alone."
    )
    write_report(args.output, "Online router math: microseconds per routed pair", notes, table(args, results))
    print(table(args, results))
    return results


if __name__ == "__main__":
    main()
