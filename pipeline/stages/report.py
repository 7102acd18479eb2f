"""The report stage: every model's pass@k table and curves, the verdicts (pipeline.analysis.verdicts),
training health, the analyses and the "Sharpening or new capability?" section, written to report.md and
logged to MLflow.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd

from pipeline.analysis import plots
from pipeline.analysis import budget, sharpening
from pipeline.analysis.analyses import _jsonable, analyze, load_evals, write_json_atomic
from pipeline.arms import arms, enabled_arms, get_arm, is_arm, row_verdicts, rows
from pipeline.arms.common import LOG_HISTORY_FILE, snapshot_steps
from pipeline.config import ExperimentConfig
from pipeline.analysis.health import PROBE_FILE, check_arm, check_probe, describe, plot_arm, read_history
from pipeline.core import tracking
from pipeline.core.io import is_complete, read_jsonl, read_problems
from pipeline.core.text import md_table as _table
from pipeline.analysis.family import Family
from pipeline.analysis.verdicts import _ci, _p, claim, family_words, sick_arms, verdict, verdict_words
from pipeline.analysis.passk import paired_difference, passk_table
from pipeline.analysis.sections import analysis_markdown, grader_markdown, per_benchmark, perplexity_markdown
from pipeline.stages import session
from pipeline.stages.base import Stage, stage_info
from pipeline.stages.adaptive import FILE as ADAPTIVE_FILE, Adaptive
from pipeline.stages.evaluate import Evaluate
from pipeline.stages.problems import Problems
from pipeline.stages.perplexity import Perplexity, report_models
from tasks import build_tasks, spec_label, task_for

def write_report(cfg: ExperimentConfig, evals: dict[str, Path], out: Path, ppl_dir: Path | None = None,
                 train_logs: dict[str, Path] | None = None, snapshots: dict[str, Path] | None = None,
                 train_problems: Path | None = None, adaptive: Path | None = None) -> dict:
    """Build report files in `out` from the evaluation directories {model: dir}, the Perplexity
    stage's directory (when there is one), the trained arms' log histories {arm: log_history.json},
    the evaluations of the arms' training snapshots {"rl@50": dir} and the problems stage's directory
    (its train.jsonl: the guessing floor's answers)."""
    pp = {m: pd.read_csv(d / "per_problem.csv", dtype={"problem_id": str}) for m, d in evals.items()}
    passk = pd.concat([pd.read_csv(d / "passk.csv") for d in evals.values()], ignore_index=True)
    pd.concat(pp.values(), ignore_index=True).to_csv(out / "per_problem.csv", index=False)
    passk.to_csv(out / "passk.csv", index=False)

    k_max = int(passk["k"].max())
    nb, seed = cfg.eval.bootstrap, cfg.seed
    health = training_health(train_logs or {}, out, cfg.seed, cfg.health.min_gain)
    runs = load_evals(evals)
    analysis = analyze(runs, out, ks=sorted(int(k) for k in passk["k"].unique()), tasks=build_tasks(cfg.tasks))
    family = Family()  # every claim of this report, adjusted together (pipeline.analysis.family)
    sharp = sharpening_section(cfg, pp, runs, k_max, passk["k"].unique(), train_problems, ppl_dir, analysis, health, out,
                               family)
    plots.passk_curves(passk, out / "passk.png", f"{cfg.name}: pass@k on {len(next(iter(pp.values())))} test problems",
                       floor=sharp["pooled_floor"])
    verdicts = []  # each row's comparisons (pipeline.arms.row_verdicts), when both of its models are in the study
    for name, a, b, k_a, k_b in row_verdicts(cfg):
        if a in pp and b in pp:
            verdicts.append(verdict(name, a, b, k_max if k_a == "max" else k_a, k_max if k_b == "max" else k_b,
                                    pp, nb, seed, health, family))
    family.decide()
    sharp["markdown"] = [family.fill(x) for x in sharp["markdown"]]
    write_json_atomic(out / "sharpening.json", json.loads(family.fill(json.dumps(_jsonable(sharp["data"])))))

    extra_metrics = [(k, v, 0) for k, v in analysis["metrics"].items()]
    extra_md = analysis_markdown(analysis, tuple(o.name for o in cfg.outside))
    if ppl_dir is not None:
        ppl = json.loads((ppl_dir / "perplexity.json").read_text())
        shutil.copy(ppl_dir / "perplexity.png", out / "perplexity.png")
        shutil.copy(ppl_dir / "perplexity.json", out / "perplexity.json")
        extra_md += perplexity_markdown(ppl)
        extra_metrics += [(k, v, 0) for k, v in ppl["metrics"].items()]

    table = passk.pivot(index="k", columns="model", values="pass_at_k")
    lo = passk.pivot(index="k", columns="model", values="ci_low")
    hi = passk.pivot(index="k", columns="model", values="ci_high")
    models = list(pp)
    ci_words = (f"95% bootstrap CIs over problems ({nb} resamples, seed {seed}); each verdict's CI is the 95% "
                "t-interval on the per-problem paired differences d_i, and its MDD, the smallest difference the "
                "comparison detects with 80% power at two-sided alpha 0.05, is (z_0.975 + z_0.8) × sd(d_i) / sqrt(N) "
                "= 2.80 × sd(d_i) / sqrt(N) for N test problems" if nb else
                "no confidence intervals and no verdicts (eval.bootstrap is 0)")
    lines = [f"# {cfg.name}: distillation vs RL", "",
             f"Base `{cfg.base_model}`, teacher `{cfg.teacher_model}`, tasks "
             f"{', '.join(spec_label(t) for t in cfg.tasks)}; n={cfg.eval.n} samples per problem at temperature "
             f"{cfg.eval.temperature}, top_p {cfg.eval.top_p}; {ci_words}.", ""]
    if cfg.teacher_model is None:
        lines += ["No SFT arm and no teacher: `teacher_model` is not set, so there are no traces to distill.", ""]
    lines += outside_markdown(cfg)
    lines += sharp["warning"] + ([""] if sharp["warning"] else [])
    lines += health_markdown(health, {o.name: o.label for o in cfg.outside})
    lines += ["## Verdicts", "", family_words(family), ""]
    for v in verdicts:
        lines.append(f"- **{v['comparison']}** = {v['diff']:+.3f}{_ci(v['ci_low'], v['ci_high'])} "
                     f"on {v['problems']} problems (MDD {v['mdd']:.3f}{_p(v)}): {v['verdict']}.")
    lines += ["", "## pass@k", "", "![pass@k curves](passk.png)", "",
              "| k | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for k in table.index:
        cells = [f"{table.loc[k, m]:.3f}" + ("" if math.isnan(lo.loc[k, m]) else f" [{lo.loc[k, m]:.3f}, {hi.loc[k, m]:.3f}]")
                 for m in models]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    by_task, task_md = per_benchmark(evals, pp, sorted(passk["k"].unique()), nb, seed)
    if by_task is not None:
        by_task.to_csv(out / "passk_by_task.csv", index=False)
        lines += task_md
        extra_metrics += [(f"by_task/{r.task}/{r.model}_pass_at_{r.k}", r.pass_at_k, 0)
                          for r in by_task.itertuples() if r.k in (1, k_max)]
    if snapshots:
        tl, tl_md = training_length(evals, snapshots, k_max, nb, seed, out)
        lines += tl_md
        extra_metrics += [(f"training_length/{r.arm}_pass_at_{r.k}", r.pass_at_k, int(r.step)) for r in tl.itertuples()]
    lines += grader_markdown(evals, pp, k_max)
    lines += ["", *sharp["markdown"]]
    if adaptive is not None:
        ad_md, ad_metrics = adaptive_markdown(adaptive, k_max, health, nb, seed)
        lines += ["", *ad_md]
        metrics_extra = ad_metrics
    else:
        metrics_extra = []
    lines += ["", extra_md] if extra_md else []
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "verdicts.json").write_text(json.dumps(verdicts, indent=2))
    (out / "health.json").write_text(json.dumps(health, indent=2))

    metrics = [(f"pass_at_k/{r.model}", r.pass_at_k, int(r.k)) for r in passk.itertuples()]
    # headline numbers under "summary/", so the chart view's first section is the pass_at_k curves
    for m in models:
        if 1 in table.index:
            metrics.append((f"summary/{m}_pass_at_1", table.loc[1, m], 0))
        metrics.append((f"summary/{m}_pass_at_{k_max}", table.loc[k_max, m], 0))
    metrics += [(f"summary/verdict_{v['name']}", v["diff"], 0) for v in verdicts]
    metrics += [(f"summary/verdict_{v['name']}_mdd", v["mdd"], 0) for v in verdicts if not math.isnan(v["mdd"])]
    metrics += [(f"summary/{arm}_learned", float(h["learned"]), 0) for arm, h in health.items()]
    metrics += sharp["metrics"] + metrics_extra
    # the parent run gets only the curves and headline numbers, so its chart view opens on them
    return dict(verdicts=verdicts, health=health, parent_metrics=metrics, analysis_metrics=list(extra_metrics))


def adaptive_markdown(d: Path, k_max: int, health: dict, nb: int, seed: int) -> tuple[list[str], list]:
    """The adaptive budget's section: each pass@k_max verdict on the adaptive counts, its width before and
    after, and the samples drawn against the uniform n predicted to reach the same width."""
    b = json.loads((d / "budget.json").read_text())
    pp = pd.read_csv(d / ADAPTIVE_FILE, dtype={"problem_id": str})
    pp = {m: g.reset_index(drop=True) for m, g in pp.groupby("model", sort=False)}
    first, last = b["rounds"][0]["widths"], b["rounds"][-1]["widths"]
    rows = []
    for name, w in last.items():
        a, m = name.split("-", 1)
        dd, lo, hi, n, mdd = paired_difference(pp[a], pp[m], b["k"], b["k"], n_boot=nb, seed=seed, level=budget.LEVEL)
        rows.append([f"{a} pass@{b['k']} − {m} pass@{b['k']}", f"{first[name]:.3f}", f"{w:.3f}",
                     f"{dd:+.3f}{_ci(lo, hi)}", verdict_words(a, m, dd, lo, hi, mdd, health, budget.LEVEL)])
    u = b["uniform_samples_same_width"]
    saved = (f"a uniform n of {b['uniform_n_same_width']} per problem is predicted to need {u:,} samples for the same "
             f"width: {u - b['samples']:+,} saved" if u else
             b.get("uniform_n_reason") or f"no uniform n up to {64 * b['max_n']} is predicted to reach it")
    md = ["## Adaptive sample budget", "",
          f"Target: every pass@{b['k']} verdict's 95% CI at most {b['target_ci_width']} wide; {len(b['rounds']) - 1} "
          f"rounds doubled n (up to {b['max_n']}) for the problems with the noisiest estimates. "
          f"{'Reached' if b['reached'] else 'Not reached (max_n)'} with {b['samples']:,} samples "
          f"({b['rounds'][0]['samples']:,} uniform at n={b['uniform_n']}); {saved}.", ""]
    md += _table(["comparison", "95% CI width at uniform n", "95% CI width, adaptive",
                  f"difference [{budget.LEVEL:.0%} CI], adaptive", "verdict"], rows)
    md += ["", f"The verdicts on adaptive counts use {budget.LEVEL:.0%} intervals: stopping once an interval is narrow "
           "called two evaluations of one model different 5.0% of the time at 95%, 3.9% at 96% (5,000 simulated pairs). "
           "They are a second look at the pass@k verdicts above on more samples and are not among the report's family "
           "of claims (its Holm adjustment and 5% bound do not cover them); the MDD is stated at their level."]
    metrics = [("summary/adaptive_samples", float(b["samples"]), 0)] + [
        (f"summary/adaptive_width_{k}", float(v), 0) for k, v in last.items()]
    return md, metrics


def sharpening_section(cfg: ExperimentConfig, pp, runs, k_max: int, pp_ks, train_problems: Path | None, ppl_dir: Path | None,
                       analysis: dict, health: dict, out: Path, family: Family | None = None) -> dict:
    """The report's "Sharpening or new capability?" section (pipeline.analysis.sharpening) for this study."""
    train_answers: dict[str, list[str]] = {}
    for p in read_problems(train_problems / "train.jsonl") if train_problems else []:
        train_answers.setdefault(p.task, []).append(p.answer)
    ppl_file = ppl_dir / "perplexity_samples.jsonl" if ppl_dir else None
    tasks = build_tasks(cfg.tasks)
    return sharpening.section(
        pp, runs, arms=[m for m in rows(cfg) if m in pp], sharpened=list(cfg.eval.sharpened_models()),
        controls={a: [c for c, spec in arms().items() if spec.control_of == a] for a in arms()},
        k_max=k_max, ks=sorted(int(k) for k in pp_ks), train_answers=train_answers, reasoning=analysis.get("reasoning"),
        canonical=lambda p, c: sharpening.canonical_chain(tasks.get(p.task), p, c),
        ppl_records=read_jsonl(ppl_file) if ppl_file and ppl_file.is_file() else None,
        n_boot=cfg.eval.bootstrap, seed=cfg.seed, out=out,
        family=family, judge=lambda models, v, p: claim(v, models[0], models[1], p, health, family),
        not_learned={x: f"the {x} run {'did not learn' if health[x].get('judged', True) else 'was not judged'}"
                     for x in sick_arms(list(pp), health)},
        verify=lambda p, c: (tasks.get(p.task) or task_for(p)).verify(p, c))


def training_health(train_logs: dict[str, Path], out: Path, seed: int, min_gain: float) -> dict[str, dict]:
    """check_arm for every trained arm, and its curves as training_<arm>.png."""
    health = {}
    for arm, path in train_logs.items():
        history = read_history(path)
        spec = get_arm(arm)
        probe = Path(path).parent / PROBE_FILE  # curriculum and one-shot RL runs: their probe set (pipeline/analysis/probe.py)
        health[arm] = (check_probe(json.loads(probe.read_text()), min_gain, kind=arm) if probe.is_file()
                       else check_arm(history, spec.health_metrics, min_gain=min_gain, seed=seed))
        png = plot_arm(history, spec.curves, out / f"training_{arm}.png", f"{arm}: training curves")
        health[arm]["plot"] = png.name if png else None
    return health


def training_length(evals: dict[str, Path], snapshots: dict[str, Path], k_max: int, n_boot: int, seed: int,
                    out: Path) -> tuple[pd.DataFrame, list[str]]:
    """pass@1 and pass@k_max of each arm at its training snapshots and at the end (the paper's
    longer-training comparison), every point from the same evaluator: training_length.csv and .png."""
    rows, per_problem = [], []
    for name, d in {**snapshots, **{a: evals[a] for a in {s.split("@")[0] for s in snapshots}}}.items():
        arm, step = (name.split("@") + [None])[:2]
        final_steps = json.loads((Path(json.loads((d / "stage.json").read_text())["model_path"]) /
                                  "train_metrics.json").read_text())["global_step"] if step is None else None
        pp = pd.read_csv(d / "per_problem.csv", dtype={"problem_id": str})
        t = passk_table(pp, [1, k_max], n_boot=n_boot, seed=seed)
        per_problem.append(pp.assign(model=arm, step=int(step or final_steps)))
        rows += [dict(arm=arm, step=int(step or final_steps), k=int(r.k), pass_at_k=r.pass_at_k, ci_low=r.ci_low,
                      ci_high=r.ci_high) for r in t.itertuples()]
    tab = pd.DataFrame(rows).sort_values(["arm", "step", "k"]).reset_index(drop=True)
    tab.to_csv(out / "training_length.csv", index=False)
    pd.concat(per_problem, ignore_index=True).to_csv(out / "training_length_per_problem.csv", index=False)  # pipeline.stages.study
    plots.training_length(tab, out / "training_length.png")
    md = ["", "## Training length", "", "Each arm's snapshots, evaluated like the final model.", "",
          "![training length](training_length.png)", ""]
    md += _table(["arm", "step", "pass@1", f"pass@{k_max}"],
                 [[a, int(st), _fmt_ci(g, 1), _fmt_ci(g, k_max)] for (a, st), g in tab.groupby(["arm", "step"])])
    return tab, md


def _fmt_ci(g: pd.DataFrame, k: int) -> str:
    r = g[g["k"] == k].iloc[0]
    return f"{r.pass_at_k:.3f}" + _ci(r.ci_low, r.ci_high).replace("+", "")


def outside_markdown(cfg: ExperimentConfig) -> list[str]:
    """The outside models (config `outside:`): what each is, and where it came from."""
    if not cfg.outside:
        return []
    return ["Outside models, evaluated here but trained elsewhere, each a row like an arm's and compared with the "
            "model it was trained from: " + "; ".join(f"**{o.name}** (`{o.ref}`, {o.label}; from {o.trained_from})"
                                                      for o in cfg.outside) + ".", ""]


def health_markdown(health: dict[str, dict], outside: dict[str, str] | None = None) -> list[str]:
    """The training-health table: each trained arm's check, and a row per outside model {name: label},
    not judged (trained elsewhere)."""
    if not health and not outside:
        return []
    lines = ["## Training health", "",
             "Each trained arm's training metric, first 10% of logged steps against the last 20% (or, for "
             "curriculum and one-shot RL, a fixed probe set at the start and the end), with one-sided bounds of "
             "the difference (95% for the log's windows; 96.5% for the probe set, whose 4-sample 0/1 data called equal "
             "rates learned up to 5.4% of the time at 95%). An arm learned when the lower bound is above zero and the gain is at least "
             "`health.min_gain`; too few points are not judged.", ""]
    for arm, h in health.items():
        if sick_arms([arm], health):
            state = "did not learn" if h.get("judged", True) else "was not judged"
            lines.append(f"> **Warning: the {arm} run {state}** ({describe(arm, h)}). Every verdict that "
                         f"involves {arm} is inconclusive until this is fixed.")
            lines.append("")
    lines += _table(["arm", "metric", "first window", "last window", "difference [one-sided bounds]", "learned"],
                    [[arm, h.get("metric") or "n/a", h.get("first", "n/a"), h.get("last", "n/a"),
                      f"{h['diff']:+.3f} [{h['ci_low']:+.3f}, {h['ci_high']:+.3f}] ({h.get('level', 0.95):.1%})" if "diff" in h
                      else h.get("reason"),
                      ("yes" if h["learned"] else "**no**" if h.get("judged", True) else "not judged")
                      + (f" (control of {get_arm(arm).control_of}: not required to learn)" if get_arm(arm).control_of else "")]
                     for arm, h in health.items()]
                    + [[m, "n/a", "n/a", "n/a", f"trained elsewhere ({label})", "not judged: trained elsewhere"]
                       for m, label in (outside or {}).items()])
    if outside:
        them = "them" if len(outside) > 1 else "it"
        lines += ["", f"{', '.join(outside)}: trained elsewhere, so there is no training run to judge. This does not make "
                  f"the verdicts about {them} inconclusive: each verdict compares models as evaluated here, on the same "
                  "prompts and samples."]
    lines.append("")
    lines += [f"![{arm} training curves]({h['plot']})" for arm, h in health.items() if h.get("plot")]
    return lines + [""]


def snapshot_evals(cfg: ExperimentConfig, config: str, overrides) -> dict[str, "Evaluate"]:
    """Evaluations of every enabled arm's training snapshots (`<arm>.snapshots`), keyed `arm@step`."""
    out = {}
    for arm in enabled_arms(cfg):
        section = cfg.get(arm)
        for step in snapshot_steps(section.max_steps, section.snapshots) if getattr(section, "snapshots", 0) else []:
            out[f"{arm}@{step}"] = Evaluate(config, overrides, model=arm, step=step)
    return out


class Report(Stage):
    stage, sections = "report", ("health",)

    def upstream(self):
        session.plain_luigi([self])  # plain `luigi ... Report`: the checks and summary of pipeline.run
        up = {m: Evaluate(self.config, self.overrides, model=m) for m in report_models(self.cfg)}
        up.update(snapshot_evals(self.cfg, self.config, self.overrides))
        up.update({m: Evaluate(self.config, self.overrides, model="base", temperature=t)
                   for m, t in self.cfg.eval.sharpened_models().items()})
        up["problems"] = Problems(self.config, self.overrides)
        if self.cfg.eval.target_ci_width:
            up["adaptive"] = Adaptive(self.config, self.overrides)
        if self.cfg.eval.perplexity_subset:
            up["perplexity"] = Perplexity(self.config, self.overrides)
        return up

    @property
    def out_dir(self) -> Path:
        return self.cfg.member_dir / "report"

    def complete(self) -> bool:  # fixed path: complete only if built from the current inputs
        return is_complete(self.out_dir) and stage_info(self.out_dir).get("key") == self.key

    def execute(self, tmp, run_id):
        models = report_models(self.cfg)
        evals = {m: Path(self.input()[m].path) for m in models}
        snapshots = {m: Path(t.path) for m, t in self.input().items() if "@" in m}
        ppl = Path(self.input()["perplexity"].path) if "perplexity" in self.input() else None
        evals.update({m: Path(self.input()[m].path) for m in self.cfg.eval.sharpened_models()})
        trained = {m: Path(stage_info(d)["model_path"]) for m, d in evals.items() if is_arm(m)}
        logs = {m: p / LOG_HISTORY_FILE for m, p in trained.items()}
        adaptive = Path(self.input()["adaptive"].path) if "adaptive" in self.input() else None
        result = write_report(self.cfg, evals, tmp, ppl, logs, snapshots, Path(self.input()["problems"].path), adaptive)
        (tmp / "models.json").write_text(json.dumps({m: {
            "eval_dir": str(d), "model_path": stage_info(d).get("model_path"),
            **{k: v for o in self.cfg.outside if o.name == m for k, v in o.model_dump(mode="json").items() if k != "name"},
            "train_metrics": json.loads((trained[m] / "train_metrics.json").read_text()) if m in trained else {}}
            for m, d in evals.items()}, indent=2))
        for m, h in result["health"].items():  # the health figures on the arm's own run
            arm_run = stage_info(trained[m].parent).get("run_id")
            if arm_run:
                tracking.log(self.cfg, arm_run, metrics=[(f"health/{k}", float(v), 0) for k, v in h.items()
                                                         if isinstance(v, (int, float)) and not isinstance(v, bool)]
                             + [("health/learned", float(h["learned"]), 0)],
                             artifacts=[tmp / h["plot"]] if h.get("plot") else [])
        parent = tracking.parent_run(self.cfg)
        tracking.log(self.cfg, parent, metrics=result["parent_metrics"], artifacts=[tmp], artifact_path="report")
        # the analyses under report/: a section after pass_at_k in the chart view, which opens on the curves
        tracking.log(self.cfg, run_id, metrics=result["parent_metrics"] + [(f"report/{k}", v, s) for k, v, s in result["analysis_metrics"]],
                     artifacts=[tmp], artifact_path="report",
                     tags={f"{m}_eval_run_id": stage_info(p).get("run_id") for m, p in evals.items()})
        tracking.end_stage(self.cfg, parent)
        print((tmp / "report.md").read_text())
        return {"verdicts": result["verdicts"]}
