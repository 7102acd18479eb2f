"""A sweep's own report: its members side by side and the paper's tables (pipeline.sweep).

Reads every member's report directory (passk.csv, verdicts.json, health.json, models.json and,
when the arms saved snapshots, training_length.csv) and writes runs/<study>/report/:

- members.csv: one row per member, its swept values and headline numbers;
- algorithms.csv/.md (the paper's Table 2): per RL variant (every axis but the seed), pass@1,
  pass@k_max and dSE = base pass@k_max − RL pass@1, each the mean over seeds with a 95% t-interval
  across seeds, and how many seeds' RL runs passed the health check;
- training_length.csv/.md/.png: pass@1 and pass@k_max at each arm's snapshots and end, over seeds;
- sft_data_size.csv/.md/.png: SFT pass@1 and pass@k_max against the number of teacher traces used.

A CI across seeds needs two seeds at least; with one seed a cell shows that member's own 95%
bootstrap CI over the test problems instead (marked "problems").
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from pipeline import plots
from pipeline.sweep import Sweep

SEED_AXES = ("seed",)


def seed_ci(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval across seeds (NaN bounds with fewer than two)."""
    v = np.asarray(list(values), dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - h, m + h


def _cell(values, g: pd.DataFrame | None = None, col: str | None = None) -> str:
    """Mean over seeds [95% t-interval across seeds]; with one seed, the member's own bootstrap CI
    over problems when the member rows `g` carry it (`<col>_ci_low/_ci_high`)."""
    m, lo, hi = seed_ci(values)
    if not math.isnan(lo):
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
    if g is not None and len(g) == 1 and f"{col}_ci_low" in g and not pd.isna(g[f"{col}_ci_low"].iloc[0]):
        return f"{m:.3f} [{g[f'{col}_ci_low'].iloc[0]:.3f}, {g[f'{col}_ci_high'].iloc[0]:.3f}] (problems)"
    return f"{m:.3f}"


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
            for k in ("num_examples", "num_problems", "global_step"):
                if k in info.get("train_metrics", {}):
                    row[f"{arm}_{k}"] = info["train_metrics"][k]
        rows.append(row)
    return pd.DataFrame(rows)


def group_axes(sweep: Sweep) -> list[str]:
    axes = list(sweep.members[0].values) if sweep.members else []
    return [f"sweep.{a}" for a in axes if a not in SEED_AXES]


def algorithms_table(df: pd.DataFrame, axes: list[str], arm: str = "rl") -> tuple[pd.DataFrame, list[str]]:
    rows = []
    for key, g in (df.groupby(axes, sort=False) if axes else [((), df)]):
        key = key if isinstance(key, tuple) else (key,)
        dse = g["base_pass_at_kmax"] - g[f"{arm}_pass_at_1"]
        learned = g.get(f"{arm}_learned", pd.Series(dtype=bool))
        row = {a.removeprefix("sweep."): k for a, k in zip(axes, key)}
        row["seeds"] = len(g)
        for name, vals in ((f"{arm}_pass_at_1", g[f"{arm}_pass_at_1"]), (f"{arm}_pass_at_kmax", g[f"{arm}_pass_at_kmax"]),
                           ("dse", dse), ("base_pass_at_kmax", g["base_pass_at_kmax"])):
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = seed_ci(vals)
        row["learned"] = f"{int(learned.sum())}/{len(g)}"
        rows.append(row)
    tab = pd.DataFrame(rows)
    k_max = int(df["k_max"].iloc[0])
    md = ["## Algorithms (the paper's Table 2)", "",
          f"Mean over seeds with a 95% t-interval across seeds; dSE = base pass@{k_max} − {arm} pass@1 (lower is "
          f"better); learned: seeds whose {arm} run passed the training-health check.", ""]
    head = [a.removeprefix("sweep.") for a in axes] + ["seeds", "pass@1", f"pass@{k_max}", "dSE", f"base pass@{k_max}", "learned"]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (key, g), (_, r) in zip((df.groupby(axes, sort=False) if axes else [((), df)]), tab.iterrows()):
        key = key if isinstance(key, tuple) else (key,)
        cells = [str(k) for k in key] + [str(len(g)), _cell(g[f"{arm}_pass_at_1"], g, f"{arm}_pass_at_1"),
                                         _cell(g[f"{arm}_pass_at_kmax"], g, f"{arm}_pass_at_kmax"),
                                         _cell(g["base_pass_at_kmax"] - g[f"{arm}_pass_at_1"]),
                                         _cell(g["base_pass_at_kmax"], g, "base_pass_at_kmax"), r["learned"]]
        md.append("| " + " | ".join(cells) + " |")
    return tab, md


def training_length_table(sweep: Sweep, reports: dict[str, Path], axes: list[str], out: Path):
    parts = []
    for m in sweep.members:
        f = reports[m.name] / "training_length.csv"
        if f.is_file():
            parts.append(pd.read_csv(f).assign(member=m.name, **{f"sweep.{a}": v for a, v in m.values.items()}))
    if not parts:
        return None, ["## Training length", "", "No member saved snapshots (set rl.snapshots, e.g. 2)."]
    df = pd.concat(parts, ignore_index=True)
    keys = axes + ["arm", "step", "k"]
    rows = []
    for key, g in df.groupby(keys, sort=True):
        m, lo, hi = seed_ci(g["pass_at_k"])
        rows.append({**dict(zip(keys, key)), "seeds": len(g), "pass_at_k": m, "ci_low": lo, "ci_high": hi})
    tab = pd.DataFrame(rows)
    label = tab[axes].astype(str).agg(" ".join, axis=1) if axes else ""
    plot_tab = tab.assign(arm=(tab["arm"] + (" " + label if axes else "")))
    plots.training_length(plot_tab, out / "training_length.png", "pass@k against training steps (mean over seeds)")
    k_max = int(tab["k"].max())
    md = ["## Training length", "", "Each arm's snapshots and final model, each evaluated by the same evaluator; "
          "mean over seeds with a 95% t-interval across seeds.", "", "![training length](training_length.png)", ""]
    head = [a.removeprefix("sweep.") for a in axes] + ["arm", "step", "seeds", "pass@1", f"pass@{k_max}"]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, g in df.groupby(axes + ["arm", "step"], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        cells = [_cell(x["pass_at_k"], x.rename(columns={"ci_low": "p_ci_low", "ci_high": "p_ci_high"}), "p")
                 for x in (g[g["k"] == 1], g[g["k"] == k_max])]
        md.append("| " + " | ".join([str(k) for k in key] + [str(g["member"].nunique()), *cells]) + " |")
    return tab, md


def sft_data_size_table(df: pd.DataFrame, axes: list[str], out: Path):
    if "sft_pass_at_1" not in df or "sft_num_examples" not in df:
        return None, ["## SFT data size", "", "No SFT arm in this study."]
    rest = [a for a in axes if a != "sweep.sft.max_traces"]
    rows = []
    for key, g in df.groupby(rest + ["sft_num_examples"], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = {**dict(zip([a.removeprefix("sweep.") for a in rest] + ["traces"], key)), "seeds": len(g)}
        for col in ("sft_pass_at_1", "sft_pass_at_kmax"):
            row[col], row[f"{col}_ci_low"], row[f"{col}_ci_high"] = seed_ci(g[col])
        row["learned"] = f"{int(g.get('sft_learned', pd.Series(dtype=bool)).sum())}/{len(g)}"
        rows.append(row)
    tab = pd.DataFrame(rows)
    k_max = int(df["k_max"].iloc[0])
    long = pd.concat([tab.assign(k=1, pass_at_k=tab["sft_pass_at_1"], ci_low=tab["sft_pass_at_1_ci_low"],
                                 ci_high=tab["sft_pass_at_1_ci_high"]),
                      tab.assign(k=k_max, pass_at_k=tab["sft_pass_at_kmax"], ci_low=tab["sft_pass_at_kmax_ci_low"],
                                 ci_high=tab["sft_pass_at_kmax_ci_high"])])
    plots.training_length(long.assign(arm="sft", step=long["traces"]), out / "sft_data_size.png",
                          "SFT pass@k against the number of teacher traces (mean over seeds)")
    md = ["## SFT data size", "", f"SFT pass@1 and pass@{k_max} against the number of verified teacher traces it "
          "trained on; mean over seeds with a 95% t-interval across seeds.", "",
          "![SFT data size](sft_data_size.png)", ""]
    head = [a.removeprefix("sweep.") for a in rest] + ["traces", "seeds", "pass@1", f"pass@{k_max}", "learned"]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (key, g), (_, r) in zip(df.groupby(rest + ["sft_num_examples"], sort=True), tab.iterrows()):
        key = key if isinstance(key, tuple) else (key,)
        md.append("| " + " | ".join([str(k) for k in key] + [str(len(g)), _cell(g["sft_pass_at_1"], g, "sft_pass_at_1"),
                                                             _cell(g["sft_pass_at_kmax"], g, "sft_pass_at_kmax"),
                                                             r["learned"]]) + " |")
    return tab, md


def write_study_report(sweep: Sweep, reports: dict[str, Path], out: Path, seconds: dict[str, float] | None = None) -> dict:
    df = member_rows(sweep, reports)
    df.to_csv(out / "members.csv", index=False)
    axes = group_axes(sweep)
    lines = [f"# {sweep.study}: a sweep of {len(sweep.members)} members", "",
             f"Base experiment `{sweep.config}`; axes: " + ", ".join(
                 f"`{a}` ({', '.join(map(str, dict.fromkeys(m.values[a] for m in sweep.members)))})"
                 for a in sweep.members[0].values) + ".", "",
             "Every member's report: `members/<member>/report/report.md`; one row per member: `members.csv`.", ""]
    unhealthy = [c.removesuffix("_learned") for c in df.columns if c.endswith("_learned") and not df[c].all()]
    for arm in unhealthy:
        bad = df.loc[~df[f"{arm}_learned"].astype(bool), "member"].tolist()
        lines += [f"> **Warning: the {arm} run did not learn in {len(bad)} member(s)** ({', '.join(bad)}); their "
                  f"numbers are not evidence about the method until that is fixed.", ""]
    tables = {}
    for t in sweep.tables:
        if t == "algorithms":
            tab, md = algorithms_table(df, axes)
        elif t == "training_length":
            tab, md = training_length_table(sweep, reports, axes, out)
        else:
            tab, md = sft_data_size_table(df, axes, out)
        if tab is not None:
            tab.to_csv(out / f"{t}.csv", index=False)
            (out / f"{t}.md").write_text("\n".join(md) + "\n")
            tables[t] = str(out / f"{t}.csv")
        lines += md + [""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"members": len(df), "tables": tables}
