"""Summarise a seed sweep: the three verdicts and the coverage counts of each experiment, as markdown.

    python scripts/seed_summary.py runs/tiny__seed-0 runs/tiny__seed-1 runs/tiny__seed-2
"""
import json
import sys
from pathlib import Path


def main(dirs):
    print("| experiment | RL training accuracy (first 10% → last 20%) | RL − base pass@1 | base − RL pass@kmax | SFT − base pass@kmax | RL vs base: both / base only / RL only / neither | SFT vs base: both / base only / SFT only / neither | CoT-pass@kmax base / SFT / RL |")
    print("|---|---|---|---|---|---|---|---|")
    for d in map(Path, dirs):
        rep = d / "report"
        if not (rep / "_SUCCESS").exists():
            print(f"| {d.name} | not finished | | | | | | |")
            continue
        v = {x["name"]: x for x in json.loads((rep / "verdicts.json").read_text())}
        cov = json.loads((rep / "coverage.json").read_text())["vs_base"]
        rea = json.loads((rep / "analysis.json").read_text())["reasoning"]
        fmt = lambda x: f"{x['diff']:+.3f} [{x['ci_low']:+.3f}, {x['ci_high']:+.3f}]"  # noqa: E731
        venn = lambda m: " / ".join(str(cov[m][k]) for k in ("both", "base_only", "model_only", "neither"))  # noqa: E731
        h = json.loads((rep / "health.json").read_text()).get("rl", {})
        learned = f"{h['first']:.2f} → {h['last']:.2f} ({'learned' if h['learned'] else 'did NOT learn'})" if "first" in h else "n/a"
        cot = " / ".join(f"{list(rea[m]['cot_pass_at_k'].values())[-1]:.2f}" for m in ("base", "sft", "rl"))
        print(f"| {d.name} | {learned} | {fmt(v['rl_vs_base_pass1'])} | {fmt(v['base_vs_rl_kmax'])} | {fmt(v['sft_vs_base_kmax'])} "
              f"| {venn('rl')} | {venn('sft')} | {cot} |")


if __name__ == "__main__":
    main(sys.argv[1:])
