"""A sweep's own report: its members side by side and the paper's tables (pipeline.config.sweep).

Reads every member's report directory (per_problem.csv, passk.csv, verdicts.json, health.json,
models.json and, when the arms saved snapshots, training_length.csv and training_length_per_problem.csv)
and writes runs/<study>/report/:

- members.csv: one row per member, its swept values and headline numbers;
- algorithms.csv/.md (the paper's Table 2): per RL variant (every axis but the seed), pass@1,
  pass@k_max and dSE = base pass@k_max − RL pass@1, and how many seeds' RL runs passed the health check;
- training_length.csv/.md/.png: pass@1 and pass@k_max at each arm's snapshots and end, over seeds;
- sft_data_size.csv/.md/.png: SFT pass@1 and pass@k_max, optimizer steps and epochs against the
  number of teacher traces used;
- sharpening.csv/.md: per arm, control arm and sharpened base row, pass@1, pass@k_max and each seed's
  crossover k, support changes and gain net of the controls.

Every cell is the mean over seeds with a 95% interval over seeds (seed_problem_ci): the seeds'
spread at seeds - 1 degrees of freedom plus, when they share a test set, its problem-to-problem
spread, half-widths added in quadrature, so tied seeds still show the uncertainty of a finite test set; its coverage is
measured at 2, 3 and 5 seeds. With fewer than 3 seeds a cell also lists the per-seed values; one seed
has no interval over seeds. A member swept to null is kept (its key reads
"null"); members that differ in k_max are refused (pipeline.config.sweep refuses them before anything runs).
"""
from __future__ import annotations

import json
import math
import sys
from functools import cached_property
from pathlib import Path

import luigi

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.analysis import plots, sharpening
from pipeline.arms import arms
from pipeline.analysis.passk import per_problem_passk
from pipeline.config import ConfigError, ExperimentConfig
from pipeline.config.sweep import Sweep
from pipeline.core import tracking
from pipeline.core.text import md_table as _md_table
from pipeline.core.io import atomic_dir, is_complete, sigterm_raises, stage_lock
from pipeline.stages import session
from pipeline.stages.base import _thaw, stage_info
from pipeline.stages.report import Report

SEED_AXES = ("seed",)
CI_WORDS = ("mean over seeds with a 95% interval over seeds and test problems (the seeds' spread at seeds − 1 degrees "
            "of freedom and the shared test set's problem-to-problem spread, half-widths added in quadrature); its "
            "coverage is measured at 2, 3 and 5 seeds (96-98%). With 2 seeds it is wide (the t quantile at 1 degree "
            "of freedom is 12.7); with fewer than 3 seeds the per-seed values follow in parentheses; one seed has "
            "no interval over seeds (\"not judged\")")


def seed_problem_ci(per_seed: list[pd.Series]) -> tuple[float, float, float]:
    """Mean over seeds of each seed's mean over problems (per_seed: one Series per seed, indexed by
    problem_id) and its 95% interval: mean -+ sqrt(t_(seeds-1)^2 a + t_(problems-1)^2 b), a = var(seed
    means) / seeds (seed-to-seed variation) and, when the seeds share one test set, b = var over problems
    of the per-problem mean over seeds / problems (the test set's sampling, common to every seed, so not in
    their spread): each part's half-width at its own degrees of freedom, added in quadrature. (A single t
    with Welch-Satterthwaite degrees of freedom covered 88% at 2 seeds: its df follow the noisy a.)
    Seeds on different test sets
    carry their test sets' sampling in their spread, so b = 0. NaN bounds with one seed (its spread over
    seeds is unknown: a test-set-only interval covered a 0.06 seed s.d. 64% of the time) or a seed with
    fewer than two problems. The two-level bootstrap this replaces covered 87.5% at 2 seeds and 90% at 3
    (tests/stages/test_sweep.py measures the coverage)."""
    vals = [s.to_numpy(dtype=float) for s in per_seed]
    means = np.array([v.mean() for v in vals])
    mean = float(means.mean())
    if len(vals) < 2 or min(len(v) for v in vals) < 2:
        return mean, math.nan, math.nan
    a = means.var(ddof=1) / len(vals)
    ids = per_seed[0].index
    b, n = 0.0, 1
    if all(len(s) == len(ids) and set(s.index) == set(ids) for s in per_seed):
        m = np.stack([s.reindex(ids).to_numpy(dtype=float) for s in per_seed]).mean(axis=0)  # per problem, over seeds
        b, n = m.var(ddof=1) / len(ids), len(ids)
    h = math.sqrt(stats.t.ppf(0.975, len(vals) - 1) ** 2 * a + (stats.t.ppf(0.975, n - 1) ** 2 * b if b else 0.0))
    return mean, mean - h, mean + h


def _cell(per_seed: list[pd.Series]) -> tuple[str, tuple[float, float, float]]:
    """"mean [lo, hi]" and, with fewer than 3 seeds, "(seed values)" ("(1 seed: not judged)"); and the numbers."""
    m, lo, hi = seed_problem_ci(per_seed)
    text = f"{m:.3f}" + ("" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]")
    if len(per_seed) == 1:
        text += " (1 seed: no interval over seeds, not judged)"
    elif len(per_seed) < 3:
        text += " (" + ", ".join(f"{s.mean():.3f}" for s in per_seed) + ")"
    return text, (m, lo, hi)


def _key(v) -> str:
    return "null" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _groups(df: pd.DataFrame, keys: list[str]):
    """(key tuple, rows) per distinct value of `keys` in order of appearance, missing values
    included (as "null": pandas' groupby would drop them)."""
    if not keys:
        return [((), df)]
    labels = df[keys].map(_key)
    return [(k if isinstance(k, tuple) else (k,), df.loc[g.index]) for k, g in labels.groupby(keys, sort=False)]


class PerProblem:
    """Per-problem pass@k of a model in a member's report (per_problem.csv), read once per member."""

    def __init__(self, reports: dict[str, Path]):
        self.reports, self.cache = reports, {}

    def values(self, member: str, model: str, k: int, file: str = "per_problem.csv", **where) -> pd.Series:
        if (member, file) not in self.cache:
            self.cache[member, file] = pd.read_csv(self.reports[member] / file, dtype={"problem_id": str})
        pp = self.cache[member, file]
        sel = pp["model"] == model
        for col, v in where.items():
            sel &= pp[col] == v
        g = pp[sel]
        if g.empty:
            raise ValueError(f"{self.reports[member] / file}: no rows for model {model!r} {where or ''}")
        return pd.Series(per_problem_passk(g["n"].to_numpy(), g["correct"].to_numpy(), [k])[:, 0],
                         index=g["problem_id"].to_numpy())


def member_rows(sweep: Sweep, reports: dict[str, Path]) -> pd.DataFrame:
    """One row per member: swept values, pass@1 and pass@k_max per model, verdict differences,
    each arm's health and what it trained on."""
    rows = []
    for m in sweep.members:
        d = reports[m.name]
        passk = pd.read_csv(d / "passk.csv")
        k_max = int(passk["k"].max())
        row = {"member": m.name, **{f"sweep.{a}": v for a, v in m.values.items()}, "k_max": k_max}
        for r in passk[passk["k"].isin([1, k_max])].itertuples():
            col = f"{r.model}_pass_at_{'kmax' if r.k == k_max else r.k}"
            row[col], row[f"{col}_ci_low"], row[f"{col}_ci_high"] = r.pass_at_k, r.ci_low, r.ci_high
        for v in json.loads((d / "verdicts.json").read_text()):
            row[f"verdict_{v['name']}"] = v["diff"]
        for arm, h in json.loads((d / "health.json").read_text()).items():
            row[f"{arm}_learned"] = bool(h["learned"])
        for arm, info in json.loads((d / "models.json").read_text()).items():
            for k in ("num_examples", "num_problems", "global_step", "epoch"):
                if k in info.get("train_metrics", {}):
                    row[f"{arm}_{k}"] = info["train_metrics"][k]
        rows.append(row)
    df = pd.DataFrame(rows)
    if df["k_max"].nunique() > 1:
        found = ", ".join(f"{r.member}: {r.k_max}" for r in df.drop_duplicates("k_max").itertuples())
        raise ValueError(f"study {sweep.study}: members differ in pass@k_max ({found}); one table needs one eval.n and eval.ks")
    return df


def group_axes(sweep: Sweep) -> list[str]:
    axes = list(sweep.members[0].values) if sweep.members else []
    return [f"sweep.{a}" for a in axes if a not in SEED_AXES]


def algorithms_table(df: pd.DataFrame, axes: list[str], pp: PerProblem, arm: str,
                     notes: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    k_max = int(df["k_max"].iloc[0])
    rows, md_rows = [], []
    for key, g in _groups(df, axes):
        members = list(g["member"])
        base_k = [pp.values(m, "base", k_max) for m in members]
        arm_1 = [pp.values(m, arm, 1) for m in members]
        cols = {f"{arm}_pass_at_1": arm_1, f"{arm}_pass_at_kmax": [pp.values(m, arm, k_max) for m in members],
                "dse": [b - a for b, a in zip(base_k, arm_1)], "base_pass_at_kmax": base_k}
        row = {a.removeprefix("sweep."): k for a, k in zip(axes, key)}
        row["seeds"] = len(g)
        cells = []
        for name, per_seed in cols.items():
            text, (row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]) = _cell(per_seed)
            cells.append(text)
        learned = g.get(f"{arm}_learned", pd.Series(dtype=bool))
        row["learned"] = f"{int(learned.sum())}/{len(g)}"
        rows.append(row)
        md_rows.append(list(key) + [str(len(g))] + cells + [row["learned"]])
    included = ("What each variant includes is in the notes below the table." if notes else
                "The sweep preset gives no `notes:` on what each variant includes.")
    md = ["## Algorithms (the paper's Table 2)", "",
          f"Each cell: {CI_WORDS}. dSE = base pass@{k_max} − {arm} pass@1 per problem (lower is better); learned: "
          f"seeds whose {arm} run passed the training-health check. {included}", ""]
    md += _md_table([a.removeprefix("sweep.") for a in axes] + ["seeds", "pass@1", f"pass@{k_max}", "dSE",
                                                                f"base pass@{k_max}", "learned"], md_rows)
    if notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return pd.DataFrame(rows), md


def training_length_table(sweep: Sweep, reports: dict[str, Path], axes: list[str], out: Path, pp: PerProblem):
    parts = []
    for m in sweep.members:
        f = reports[m.name] / "training_length.csv"
        if f.is_file():
            parts.append(pd.read_csv(f).assign(member=m.name, **{f"sweep.{a}": v for a, v in m.values.items()}))
    if not parts:
        return None, ["## Training length", "", "No member saved snapshots (set rl.snapshots, e.g. 2)."]
    df = pd.concat(parts, ignore_index=True)
    k_max = int(df["k"].max())
    rows, md_rows = [], []
    df = df.sort_values(axes + ["arm", "step"], kind="stable", key=lambda c: c.map(_key) if c.name != "step" else c)
    for key, g in _groups(df, axes + ["arm", "step"]):
        cells = []
        for k in (1, k_max):
            members = list(g.loc[g["k"] == k, "member"])
            if all((reports[m] / "training_length_per_problem.csv").is_file() for m in members):
                per_seed = [pp.values(m, key[-2], k, "training_length_per_problem.csv", step=int(key[-1]))
                            for m in members]
                text, (mean, lo, hi) = _cell(per_seed)
            else:  # a report from before training_length_per_problem.csv: the seeds' values, no interval
                vals = g.loc[g["k"] == k, "pass_at_k"]
                mean, lo, hi = float(vals.mean()), math.nan, math.nan
                text = f"{mean:.3f} (" + ", ".join(f"{v:.3f}" for v in vals) + ")"
            cells.append(text)
            rows.append({**dict(zip(axes + ["arm", "step"], key)), "k": k, "seeds": len(members),
                         "pass_at_k": mean, "ci_low": lo, "ci_high": hi})
        md_rows.append(list(key) + [str(g["member"].nunique())] + cells)
    tab = pd.DataFrame(rows)
    tab["step"] = tab["step"].astype(int)
    label = tab[axes].astype(str).agg(" ".join, axis=1) if axes else ""
    plots.training_length(tab.assign(arm=(tab["arm"] + (" " + label if axes else ""))), out / "training_length.png",
                          "pass@k against training steps (mean over seeds)")
    md = ["## Training length", "", f"Each arm's snapshots and final model, each evaluated by the same evaluator; "
          f"{CI_WORDS}.", "", "![training length](training_length.png)", ""]
    md += _md_table([a.removeprefix("sweep.") for a in axes] + ["arm", "step", "seeds", "pass@1", f"pass@{k_max}"], md_rows)
    return tab, md


def _spread(vals: pd.Series, fmt: str) -> str:
    """The distinct values over seeds, e.g. "120" or "118/120"; "n/a" when not recorded."""
    v = [format(x, fmt) for x in vals.dropna()]
    return "/".join(dict.fromkeys(v)) or "n/a"


def data_size_table(df: pd.DataFrame, axes: list[str], out: Path, pp: PerProblem, arm: str):
    """The arm's pass@1 and pass@k_max against the number of training rows it used (its `max_traces` axis)."""
    title = f"{arm.upper()} data size"
    if f"{arm}_pass_at_1" not in df or f"{arm}_num_examples" not in df:
        return None, [f"## {title}", "", f"No {arm} arm in this study."]
    rest = [a for a in axes if a != f"sweep.{arm}.max_traces"]
    k_max = int(df["k_max"].iloc[0])
    rows, md_rows = [], []
    for key, g in _groups(df.sort_values(f"{arm}_num_examples", kind="stable"), rest + [f"{arm}_num_examples"]):
        row = {**dict(zip([a.removeprefix("sweep.") for a in rest] + ["traces"], key)), "seeds": len(g)}
        row["traces"] = int(float(row["traces"]))
        steps, epochs = (_spread(g.get(f"{arm}_{c}", pd.Series(dtype=float)), f) for c, f in (("global_step", ".0f"),
                                                                                            ("epoch", ".2f")))
        row["steps"], row["epochs"] = steps, epochs
        cells = []
        for col, k in ((f"{arm}_pass_at_1", 1), (f"{arm}_pass_at_kmax", k_max)):
            text, (row[col], row[f"{col}_ci_low"], row[f"{col}_ci_high"]) = _cell([pp.values(m, arm, k) for m in g["member"]])
            cells.append(text)
        row["learned"] = f"{int(g.get(f'{arm}_learned', pd.Series(dtype=bool)).sum())}/{len(g)}"
        rows.append(row)
        md_rows.append(list(key[:-1]) + [str(row["traces"]), steps, epochs, str(len(g))] + cells + [row["learned"]])
    tab = pd.DataFrame(rows)
    p1, pk = f"{arm}_pass_at_1", f"{arm}_pass_at_kmax"
    long = pd.concat([tab.assign(k=1, pass_at_k=tab[p1], ci_low=tab[f"{p1}_ci_low"], ci_high=tab[f"{p1}_ci_high"]),
                      tab.assign(k=k_max, pass_at_k=tab[pk], ci_low=tab[f"{pk}_ci_low"], ci_high=tab[f"{pk}_ci_high"])])
    png = f"{arm}_data_size.png"
    plots.training_length(long.assign(arm=arm, step=long["traces"]), out / png,
                          f"{arm} pass@k against the number of training examples (mean over seeds)")
    md = [f"## {title}", "", f"{arm} pass@1 and pass@{k_max} against the number of training examples it "
          f"trained on, with its optimizer steps and epochs (passes over those examples; values over seeds joined by "
          f"/); {CI_WORDS}.", "", f"![{title}]({png})", ""]
    md += _md_table([a.removeprefix("sweep.") for a in rest] + ["traces", "steps", "epochs", "seeds", "pass@1",
                                                               f"pass@{k_max}", "learned"], md_rows)
    return tab, md


def sharpening_table(df: pd.DataFrame, axes: list[str], pp: PerProblem, reports: dict[str, Path]):
    """Per model but the base and teacher (arms, controls, sharpened base rows): pass@1 and pass@k_max
    (two-level bootstrap cells), and each seed's crossover k, expanded/shrunk problems and net gain over
    the best control at pass@1, from the members' sharpening.json (pipeline.analysis.sharpening)."""
    k_max = int(df["k_max"].iloc[0])
    rows, md_rows = [], []
    for key, g in _groups(df, axes):
        members = list(g["member"])
        data = {m: json.loads((reports[m] / "sharpening.json").read_text()) for m in members}
        models = [m for m in pd.read_csv(reports[members[0]] / "per_problem.csv")["model"].unique() if m not in ("base", "teacher")]
        for model in models:
            cells = [_cell([pp.values(m, model, k) for m in members]) for k in (1, k_max)]

            def each(get) -> str:
                return ", ".join(str(get(data[m])) for m in members)

            cross = each(lambda d: sharpening.crossover_cell(d["crossover"].get(model)))
            support = {c: each(lambda d, c=c: next((f"{r[c]} ({r[c + '_null']:.1f})" for r in d.get("support", [])
                                                    if r["arm"] == model and r["level"] == "all"), "n/a")) for c in ("expanded", "shrunk")}
            net = each(lambda d: next((f"{g_['diff']:+.3f}" for g_ in d["net_gains"] if g_["arm"] == model
                                       and g_["kind"] == "controls" and g_["k"] == 1), "n/a"))
            rows.append({**dict(zip(axes, key)), "model": model, "seeds": len(members), "pass_at_1": cells[0][1][0],
                         f"pass_at_{k_max}": cells[1][1][0], "crossover_k": cross, **support, "net_gain_vs_controls_pass1": net})
            md_rows.append(list(key) + [model, str(len(members)), cells[0][0], cells[1][0], cross, support["expanded"],
                                        support["shrunk"], net])
    md = ["## Sharpening or new capability", "", f"pass@k cells: {CI_WORDS}. The other columns list each seed's value "
          "(members' report section \"Sharpening or new capability?\": crossover k, \"none up to n\" or \"no lead\" "
          "for a model whose pass@1 is not above the base's; problems only the model / only the base solves with all n samples, "
          "each beside, in brackets, the count the same model evaluated twice gives by chance; pass@1 net of the best control arm).", ""]
    md += _md_table([a.removeprefix("sweep.") for a in axes] + ["model", "seeds", "pass@1", f"pass@{k_max}", "crossover k",
                                                                 "expanded", "shrunk", "net gain vs controls (pass@1)"], md_rows)
    return pd.DataFrame(rows), md


def write_study_report(sweep: Sweep, reports: dict[str, Path], out: Path, seconds: dict[str, float] | None = None) -> dict:
    df = member_rows(sweep, reports)
    df.to_csv(out / "members.csv", index=False)
    axes = group_axes(sweep)
    pp = PerProblem(reports)
    lines = [f"# {sweep.study}: a sweep of {len(sweep.members)} members", "",
             f"Base experiment `{sweep.config}`; axes: " + ", ".join(
                 f"`{a}` ({', '.join(map(_key, dict.fromkeys(m.values[a] for m in sweep.members)))})"
                 for a in sweep.members[0].values) + ".", "",
             "Every member's report: `members/<member>/report/report.md`; one row per member: `members.csv`.", ""]
    unhealthy = [c.removesuffix("_learned") for c in df.columns if c.endswith("_learned") and not df[c].all()
                 and not arms()[c.removesuffix("_learned")].control_of]  # a control is not required to learn
    for arm in unhealthy:
        bad = df.loc[~df[f"{arm}_learned"].astype(bool), "member"].tolist()
        lines += [f"> **Warning: the {arm} run did not learn in {len(bad)} member(s)** ({', '.join(bad)}); their "
                  f"numbers are not evidence about the method until that is fixed.", ""]
    tables = {}
    for t in sweep.tables:
        # the arm a table is about: the one that lists it in its `study_tables` (pipeline/arms)
        owner = next((a.name for a in arms().values() if t in a.study_tables), None)
        if t == "training_length":
            tab, md = training_length_table(sweep, reports, axes, out, pp)
        elif t == "sharpening":
            tab, md = sharpening_table(df, axes, pp, reports)
        elif owner is None:
            raise ValueError(f"study table {t!r}: no arm lists it in its study_tables")
        elif t == "algorithms":
            tab, md = algorithms_table(df, axes, pp, arm=owner, notes=sweep.notes)
        else:
            tab, md = data_size_table(df, axes, out, pp, arm=owner)
        if tab is not None:
            tab.to_csv(out / f"{t}.csv", index=False)
            (out / f"{t}.md").write_text("\n".join(md) + "\n")
            tables[t] = str(out / f"{t}.csv")
        lines += md + [""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"members": len(df), "tables": tables}


class Study(luigi.Task):
    """A sweep (pipeline.config.sweep): every member's Report, then the study's tables in runs/<study>/report/.

        luigi --module pipeline.dag Study --sweep configs/sweeps/algorithms.yaml --local-scheduler --workers 2
    """

    sweep = luigi.Parameter(default="", description="a sweep preset, e.g. configs/sweeps/algorithms.yaml")
    spec = luigi.DictParameter(default={}, description="an expanded sweep (pipeline.run builds it from --sweep)")

    @cached_property
    def plan(self):
        from pipeline.config.sweep import Sweep, load_sweep

        try:
            return Sweep.from_spec(_thaw(self.spec)) if self.spec else load_sweep(self.sweep)
        except ConfigError as e:  # one line and exit 2, as pipeline.run
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    def requires(self):
        reports = {m.name: Report(self.plan.config, m.overrides) for m in self.plan.members}
        session.plain_luigi(list(reports.values()))  # plain `luigi ... Study`: the checks and summary of pipeline.run
        return reports

    @cached_property
    def cfg(self) -> ExperimentConfig:  # the study's settings: its first member's
        return self.requires()[self.plan.members[0].name].cfg

    @property
    def out_dir(self) -> Path:
        return self.cfg.run_dir / "report"

    @cached_property
    def key(self) -> str:
        reports = {n: r.key for n, r in self.requires().items()}
        return self.cfg.section_hash(extra=[reports, self.plan.tables, [m.values for m in self.plan.members], self.plan.notes])

    def output(self):
        return luigi.LocalTarget(str(self.out_dir))

    def complete(self) -> bool:
        return is_complete(self.out_dir) and stage_info(self.out_dir).get("key") == self.key

    def run(self):
        with stage_lock(self.cfg.run_dir, "study-report"), sigterm_raises():
            if self.complete():
                return
            reports = {n: Path(r.out_dir) for n, r in self.requires().items()}
            with atomic_dir(self.out_dir, root=self.cfg.output_dir) as tmp:
                result = write_study_report(self.plan, reports, tmp)
                (tmp / "stage.json").write_text(json.dumps({"stage": "study", "key": self.key, **result}, indent=2))
            tracking.log_study(self.cfg, self.plan, reports, self.out_dir)
            print((self.out_dir / "report.md").read_text())
