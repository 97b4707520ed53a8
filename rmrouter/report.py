"""One results report from the runs' output files: `docs/RESULTS.md` and the README's headline block.

    python cli.py report --config configs/report.yaml

Every number in it is read from a file a command wrote: the docs the benchmark scripts write (each names its command
and machine in its first lines, quoted beside its table here) and the downstream sweep's `results.json`. Nothing in
the report is typed by hand; a test keeps the README's block equal to what this writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rmrouter.machine import current_commit, describe_machine

log = logging.getLogger(__name__)

HEADLINE_START, HEADLINE_END = "<!-- results-headline:start -->", "<!-- results-headline:end -->"
WRITTEN_BY = re.compile(r"^(Written by .*?; do not edit by hand\.|_Copied by .*_)$", re.MULTILINE)


@dataclass(frozen=True)
class Table:
    """A markdown table of a doc: the heading above it, its header cells and its rows of cells."""

    heading: str
    header: list[str]
    rows: list[list[str]]
    text: str

    def cell(self, row_label: str, column: str) -> str:
        """The cell of the row whose first cell is `row_label`, in `column`."""
        index = self.header.index(column)
        for row in self.rows:
            if row[0] == row_label:
                return row[index]
        raise KeyError(f"no row {row_label!r} in the table under {self.heading!r}")


def tables(text: str) -> list[Table]:
    """Every markdown table of `text`, in order, each with the latest heading above it."""
    found, heading, block = [], "", []

    def close() -> None:
        if len(block) >= 2:
            cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block]
            found.append(Table(heading, cells[0], cells[2:], "\n".join(block)))
        block.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            block.append(line)
            continue
        close()
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
    close()
    return found


def table_under(text: str, heading_prefix: str = "", after: str = "") -> Table:
    """The first table whose heading starts with `heading_prefix`, after the first heading starting with `after`."""
    seen_after = not after
    for table in tables(text):
        seen_after = seen_after or table.heading.startswith(after)
        if seen_after and table.heading.startswith(heading_prefix):
            return table
    raise KeyError(f"no table under a heading starting {heading_prefix!r} (after {after!r})")


def provenance(text: str, path: Path) -> str:
    """The doc's own line naming the command that wrote it, or a note that it names none."""
    match = WRITTEN_BY.search(text)
    return match.group(1) if match else f"`{path}` names no command."


def write_report(
    output: str = "docs/RESULTS.md",
    readme: str | None = "README.md",
    offline: str = "docs/offline_router_seeds_large.md",
    routing: str = "docs/routing_benchmark.md",
    downstream: str = "docs/downstream/results.json",
    online_step: str = "docs/online_step.md",
    router_math: str = "docs/router_math.md",
    main_job: str = "docs/main_job_times.md",
    reliability: str = "docs/reliability.md",
    plot: str = "docs/downstream/win_rates.png",
    offline_real: str | None = None,
    routing_real: str | None = None,
    offline_task: str | None = None,
    offline_task_real: str | None = None,
    drift: str | None = None,
    cost: str | None = None,
    serving: str | None = None,
) -> None:
    """Writes the results report and the README's headline block from the files the commands wrote.

    Args:
        output: The report.
        readme: The README whose `results-headline` block gets the headline numbers; None leaves it alone.
        offline: The offline router's seeds report (`benchmarks/offline_router_seeds.py`).
        routing: The online routing benchmark (`benchmarks/routing_benchmark.py`).
        downstream: The downstream sweep's results (`python cli.py sweep`).
        online_step: The online step against TRL (`benchmarks/online_step.py`).
        router_math: The router math timings (`benchmarks/router_math.py`).
        main_job: The main job's stage times (`python cli.py publish`).
        reliability: The reliability trials (`benchmarks/reliability.py`).
        plot: The downstream figure this writes (linked from the report).
        offline_real: The offline router's seeds report on the second, real pool; None: the report has one pool.
        routing_real: The routing benchmark on the second pool (with `offline_real`).
        offline_task: The task-aware router's seeds report on the default pool; None: the report has none.
        offline_task_real: The same on the second pool.
        drift: The drift benchmark (`benchmarks/routing_drift.py`); None: the report has no drift section.
        cost: The cost frontier (`benchmarks/cost_frontier.py`); None: the report has no cost section.
        serving: The reward server's throughput (`benchmarks/serving.py`); None: the report leaves it out.
    """
    from rmrouter.evaluation.sweep_table import sweep_table

    inputs = dict(offline=offline, routing=routing, online_step=online_step, router_math=router_math,
                  main_job=main_job, reliability=reliability, downstream=downstream)  # fmt: skip
    if offline_real is not None and routing_real is not None:
        inputs.update(offline_real=offline_real, routing_real=routing_real)
    for name, path in (
        ("offline_task", offline_task),
        ("offline_task_real", offline_task_real),
        ("drift", drift),
        ("cost", cost),
        ("serving", serving),
    ):
        if path is not None:
            inputs[name] = path
    paths = {name: Path(path) for name, path in inputs.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"report: missing {missing}: run the commands their READMEs name first")
    docs = {name: p.read_text() for name, p in paths.items() if name != "downstream"}
    results = json.loads(paths["downstream"].read_text())
    out = Path(output)
    figure = Path(plot)
    downstream_figure(results, figure)

    def quoted(name: str, table: Table, title: str) -> list[str]:
        link = _relative(paths[name], out.parent)
        return [f"### {title}", "", f"From [`{paths[name]}`]({link}): {provenance(docs[name], paths[name])}", "",
                table.text, ""]  # fmt: skip

    offline_sections, routing_sections = [], []
    for (offline_doc, routing_doc), label in pools(docs):
        offline_sections += quoted(offline_doc, table_under(docs[offline_doc]),
                                   f"{label}: router accuracy against its baselines, over seeds")  # fmt: skip
        if TASK_DOCS[offline_doc] in docs:
            offline_sections += quoted(TASK_DOCS[offline_doc], table_under(docs[TASK_DOCS[offline_doc]]),
                                       f"{label}: the task-aware router against the same baselines")  # fmt: skip
        for heading, after, title in (("Fidelity (a)", "", "fidelity (a): oracle reward"),
                                      ("Goals", "Fidelity (a)", "fidelity (a): paired goals"),
                                      ("Fidelity (b)", "", "fidelity (b): log-linear DPO policy")):  # fmt: skip
            routing_sections += quoted(routing_doc, table_under(docs[routing_doc], heading, after), f"{label}, {title}")
    routing_figures = sorted((paths["routing"].parent / paths["routing"].stem).glob("*_cumulative.png"))
    drift_sections = []
    if "drift" in docs:
        drift_sections = [
            "## Routing under drift",
            "",
            *quoted("drift", table_under(docs["drift"], "Goals"), "Goals at fidelity (a), against the static lookup"),
            *[f"![{p.stem}]({_relative(p, out.parent)})"
              for p in sorted((paths["drift"].parent / paths["drift"].stem).glob("*_oracle.png"))],
            "",
        ]  # fmt: skip
    cost_sections = []
    if "cost" in docs:
        cost_sections = [
            "## Accuracy against cost",
            "",
            *quoted("cost", table_under(docs["cost"], "Goals"), "Goals: routed and cascaded points against single RMs "
                    "and ensembles"),
            f"![accuracy against cost]({_relative(paths['cost'].with_suffix('.png'), out.parent)})",
            "",
        ]  # fmt: skip
    lines = [
        "# Results",
        "",
        f"_Written by `python cli.py report --config configs/report.yaml` on {describe_machine()}, at commit "
        f"`{current_commit()}`, from the files below; do not edit by hand. Each section names the command and the "
        "machine of its numbers, which may differ from this one._",
        "",
        "## Headline",
        "",
        headline(docs, results, paths, out.parent),
        "",
        "## Offline router",
        "",
        *offline_sections,
        "## Online routing benchmark",
        "",
        *routing_sections,
        *[f"![{p.stem}]({_relative(p, out.parent)})" for p in routing_figures],
        "",
        *drift_sections,
        *cost_sections,
        "## Downstream: trained policies evaluated",
        "",
        f"From [`{paths['downstream']}`]({_relative(paths['downstream'], out.parent)}), written by `python cli.py "
        "sweep --config configs/sweep.yaml`.",
        "",
        sweep_table(results).replace("## Downstream:", "### Downstream:"),
        f"![downstream win rates]({_relative(figure, out.parent)})",
        "",
        "## Speed",
        "",
        *quoted("online_step", table_under(docs["online_step"]), "The online step against TRL"),
        *quoted("router_math", table_under(docs["router_math"]), "Router math per routed pair"),
        *quoted("main_job", table_under(docs["main_job"]), "The main job, per stage"),
        *(
            quoted("serving", table_under(docs["serving"]), "The reward server, routed and every RM")
            if "serving" in docs
            else []
        ),
        "## Reliability",
        "",
        *quoted("reliability", table_under(docs["reliability"]), "Kills, torn files and bad configs"),
        "## Seeds",
        "",
        f"- downstream sweep: seeds {results['seeds']} (each the global, pair-drawing, data-order and router seed)",
        *[f"- {name}: {line}" for name, line in seeds_lines(docs).items()],
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    log.info("report written to %s", out)
    if readme is not None:
        update_readme(Path(readme), headline(docs, results, paths, relative_to=Path(readme).parent))


def seeds_lines(docs: dict[str, str]) -> dict[str, str]:
    """Each doc's own sentence naming its seeds, where it has one."""
    found = {}
    for name, text in docs.items():
        match = re.search(r"[Ss]eeds? \[[0-9, ]+\]", text)
        if match:
            found[name] = match.group(0)
    return found


def headline(docs: dict[str, str], results: dict, paths: dict[str, Path], relative_to: Path) -> str:
    """The few numbers a reader wants first, each from its table, with a link to it (relative to `relative_to`)."""
    from rmrouter.evaluation.sweep_table import LABELS, compare, mean_sd

    def link(name: str) -> str:
        return f"[{paths[name].name}]({_relative(paths[name], relative_to)})"

    lines = [pools_table(docs, link), ""]
    reference = results["reference"]
    win, sd = mean_sd([run["metrics"].get("chat/win_rate", math.nan) for run in results["runs"]
                       if run["method"] == reference])  # fmt: skip
    cells = []
    for method in ("best_single", "majority", "data_label"):
        test = compare(results, method, "win_rate") if method in results["methods"] else None
        if test is not None:  # `compare` is the method minus the reference: turned round here
            verdict = {"above": "below", "below": "above"}.get(test.verdict(), "no difference")
            cells.append(f"{LABELS[method]} {0.0 - 100 * test.mean:+.1f} points (p {test.p_value:.2g}, {verdict})")
    seeds = len(results["seeds"])
    spread = f" ± {100 * sd:.1f}" if not math.isnan(sd) else ""
    lines.append(
        f"- **Downstream** ({seeds} seed{'s' if seeds > 1 else ''} at the sweep's budget): the BayesianRouter-trained "
        f"policy wins {100 * win:.1f}{spread} % of judged prompts against its start; its judged wins against "
        + "; ".join(cells)
        + f" ({link('downstream')})."
    )
    if "drift" in docs:
        lines.append(drift_line(table_under(docs["drift"], "Goals"), link("drift")))
    if "cost" in docs:
        lines.append(cost_line(table_under(docs["cost"], "Goals"), link("cost")))
    step = _step_cell(table_under(docs["online_step"]))
    speed = f"- **Speed**: the online step at k = 2 in {step} ({link('online_step')})"
    if "serving" in docs:
        speed += (
            f"; the reward server routed, against every RM: {_serving_cell(table_under(docs['serving']))} "
            f"({link('serving')})"
        )
    lines.append(speed + ".")
    return "\n".join(lines)


def drift_line(goals: Table, link: str) -> str:
    """The headline's drift sentence: the task-aware router against the static lookup on each drift stream, and
    what each form of forgetting costs where nothing drifts."""
    drifting = [f"{row[0]} {row[3].split(' ±')[0]} ({row[4]})" for row in goals.rows
                if row[1] == "task" and row[2] == "data_label"]  # fmt: skip
    forms = {"task_forget": "toward the prior mean", "task_forget_prior": "toward the prior"}
    forgetting = [f"{row[3].split(' ±')[0]} ({row[4]}) {forms[row[1]]}" for row in goals.rows
                  if row[0] == "stationary" and row[1] in forms]  # fmt: skip
    cost = f"; forgetting where nothing drifts, against none: {', '.join(forgetting)}" if forgetting else ""
    return (f"- **Under drift** (oracle reward): TaskBayesianRouter against the static lookup after the change: "
            f"{'; '.join(drifting)} points{cost} ({link}).")  # fmt: skip


def cost_line(goals: Table, link: str) -> str:
    """The headline's cost sentence: per split, how many single RMs a routed or cascaded point beats at no more than
    their cost, and the best point at a third of majority vote's cost against it."""
    parts = []
    for split in dict.fromkeys(row[0] for row in goals.rows):
        rows = [row for row in goals.rows if row[0] == split]
        singles = [row for row in rows if row[1] == "above at no more cost"]
        above = [row for row in singles if row[5] == "above"]
        not_above = ", ".join(row[2].split(" (")[0].removeprefix("single: ") for row in singles if row[5] != "above")
        part = f"{split} above {len(above)} of {len(singles)} single RMs at no more cost"
        part += f" (not {not_above})" if not_above else ""
        majority = [row for row in rows if row[2].startswith("majority vote")]
        if majority:
            part += f", {majority[0][4].split(' ±')[0]} points against majority vote at a third of its cost or less"
        parts.append(part)
    return f"- **Accuracy against cost** (seconds of RM time per pair): {'; '.join(parts)} ({link})."


POOLS = {("offline", "routing"): "Default pool", ("offline_real", "routing_real"): "Real pool (LLMBar's LLM judges)"}
TASK_DOCS = {"offline": "offline_task", "offline_real": "offline_task_real"}  # each pool's task-aware router report


def pools(docs: dict[str, str]) -> list[tuple[tuple[str, str], str]]:
    """`((offline doc, routing doc), label)` of each pool the report has the docs of."""
    return [(keys, label) for keys, label in POOLS.items() if all(key in docs for key in keys)]


def pools_table(docs: dict[str, str], link) -> str:
    """The routing results of every pool side by side: the offline router and BayesianRouter against the baselines a
    user would pick instead, each cell from its doc."""
    measured = "measured (points, 95 % interval)"
    shown = pools(docs)
    rows = [
        "| | " + " | ".join(label for _, label in shown) + " |",
        "|---|" + "---|" * len(shown),
        "| **Offline router** (test split, mean ± se over seeds) against data-label routing | "
        + " | ".join(_offline_cell(table_under(docs[offline])) for (offline, _), _ in shown)
        + " |",
    ]
    if all(TASK_DOCS[offline] in docs for (offline, _), _ in shown):
        rows.append(
            "| **Task-aware router** (test split, labels read where known) against data-label routing | "
            + " | ".join(_offline_cell(table_under(docs[TASK_DOCS[offline]])) for (offline, _), _ in shown)
            + " |"
        )
    goals = [table_under(docs[routing], "Goals", after="Fidelity (a)") for (_, routing), _ in shown]
    for router in ("BayesianRouter", "TaskBayesianRouter"):
        for baseline in ("routing by data label", "best single RM (on train)"):
            row = f"{router} above {baseline}"
            if not all(any(cells[0] == row for cells in table.rows) for table in goals):
                continue  # a router the benchmark did not run
            cells = [f"{table.cell(row, measured)} points, {table.cell(row, 'verdict')}" for table in goals]
            rows.append(f"| **Online routing** (oracle reward): {router} against {baseline} | " + " | ".join(cells)
                        + " |")  # fmt: skip
    sources = [
        ", ".join(link(name) for name in (offline, TASK_DOCS[offline], routing) if name in docs)
        for (offline, routing), _ in shown
    ]
    rows.append("| from | " + " | ".join(sources) + " |")
    return "\n".join(rows)


def _offline_cell(offline: Table) -> str:
    return (f"{offline.cell('test', 'router mean ± se')} against {offline.cell('test', 'data-label routing')}: "
            f"{offline.cell('test', 'verdict')}")  # fmt: skip


def _step_cell(step: Table) -> str:
    """Every precision the table timed at k = 2, e.g. `32-true: 17.18 s a step, 0.68x TRL's; bf16-mixed: ...`."""
    cells = [
        f"{row[0]}: {row[3]} s a step, {row[4]}x TRL's" for row in step.rows if row[2] == "rmrouter" and row[1] == "2"
    ]
    if not cells:
        raise KeyError("no rmrouter row at k = 2 in the online step table")
    return "; ".join(cells)


def _serving_cell(table: Table) -> str:
    """The routed and the every-RM server's pairs per second, e.g. `23.6 against 2.6 pairs per second`."""
    rates = {row[0].split(" (")[0]: row[2].split(" ")[0] for row in table.rows}
    return f"{rates['routed by data label']} against {rates['ensemble']} pairs per second"


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    if HEADLINE_START not in text or HEADLINE_END not in text:
        raise ValueError(f"{readme} has no {HEADLINE_START} ... {HEADLINE_END} block for the headline")
    start, end = text.index(HEADLINE_START) + len(HEADLINE_START), text.index(HEADLINE_END)
    readme.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def downstream_figure(results: dict, path: Path) -> None:
    """Each method's win rate and length-controlled win rate against its start, mean and sd over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("report: the figure needs matplotlib: pip install -e '.[bench]'") from error
    from rmrouter.evaluation.sweep_table import LABELS, mean_sd

    methods = list(results["methods"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(methods) + 1.2))
    for offset, (key, label) in enumerate((("chat/win_rate", "win rate"), ("chat/lc_win_rate", "length-controlled"))):
        stats = [mean_sd([r["metrics"].get(key, math.nan) for r in results["runs"] if r["method"] == m])
                 for m in methods]  # fmt: skip
        means = [100 * mean for mean, _ in stats]
        spreads = [0.0 if math.isnan(sd) else 100 * sd for _, sd in stats]
        rows = [i + 0.2 * offset for i in range(len(methods))]
        ax.errorbar(means, rows, xerr=spreads, fmt="o", capsize=3, label=label)
    ax.axvline(50.0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(methods)), [LABELS.get(m, m) for m in methods])
    ax.set_xlabel("% against the starting policy (mean ± sd over seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)
