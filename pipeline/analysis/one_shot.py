"""One-shot RLVR's example, picked as Wang et al. (2025) pick it: by the historical variance of its
training accuracy, i.e. the variance over a finished full-data RL run's epochs of the share of its
rollouts that verify. The RL arm records every step's per-problem correct counts (RolloutRecord,
written beside the model as ROLLOUTS_FILE); `historical_variance` ranks the problems from it.

    python -m pipeline.analysis.one_shot RL_MODEL_DIR [--top 5]

prints the ranking; the first id goes into `rl.one_shot_problem` of a one-shot run
(configs/sweeps/one-shot.yaml). Each appearance of a problem in the run (TRL's sampler shows every
problem once per epoch, num_generations rollouts at a time) is one epoch's accuracy; a problem seen
fewer than MIN_EPOCHS times is not ranked.
"""
from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from pipeline.core.io import write_atomic

ROLLOUTS_FILE = "rollout_accuracy.csv"  # beside the model: per step and problem, correct rollouts of n
MIN_EPOCHS = 2


class RolloutRecord:
    """Every training step's per-problem rollout correctness, appended to a CSV in the checkpoint
    directory (it outlives a kill) and written beside the model, without the rows of steps that a
    resumed run trained again, as ROLLOUTS_FILE: step, problem_id, correct, n (under several processes,
    rank 0's share). What Wang et al. (2025) rank one-shot RLVR's example by (pipeline/analysis/one_shot.py)."""

    COLUMNS = ("attempt", "step", "problem_id", "correct", "n")

    def __init__(self, path: Path):
        import os
        import time

        self.path, self.attempt = Path(path), f"{os.getpid()}-{time.time_ns()}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:  # a kill may have cut the last row: end it
            with open(self.path, "rb+") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def add(self, step: int, problem_ids: list[str], correct: list[bool]) -> None:
        counts: dict[str, list[int]] = {}
        for pid, ok in zip(problem_ids, correct):
            c = counts.setdefault(pid, [0, 0])
            c[0], c[1] = c[0] + int(ok), c[1] + 1
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.COLUMNS)
            w.writerows([self.attempt, step, pid, c, n] for pid, (c, n) in counts.items())

    def finish(self, out_dir: str) -> None:
        """ROLLOUTS_FILE in out_dir: for each step, the rows of the last attempt that trained it."""
        if not self.path.is_file():
            return
        with open(self.path) as f:
            rows = [r for r in csv.DictReader(f) if r.get("n")]  # a row cut by a kill has no n
        last = {r["step"]: r["attempt"] for r in rows}
        keep = [r for r in rows if last[r["step"]] == r["attempt"]]
        lines = ["step,problem_id,correct,n"] + [f"{r['step']},{r['problem_id']},{r['correct']},{r['n']}" for r in keep]
        write_atomic(Path(out_dir) / ROLLOUTS_FILE, "\n".join(lines) + "\n")


def historical_variance(model_dir: str | Path) -> list[tuple[str, float, int]]:
    """(problem_id, population variance of its per-epoch training accuracy, epochs) for every problem seen
    at least MIN_EPOCHS times, highest variance first (ties: the first seen)."""
    path = Path(model_dir) / ROLLOUTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the RL arm writes it beside its model; expected the model "
                                f"directory of a finished RL run)")
    acc: dict[str, list[float]] = {}
    with open(path) as f:
        for r in sorted(csv.DictReader(f), key=lambda r: int(r["step"])):
            acc.setdefault(r["problem_id"], []).append(int(r["correct"]) / int(r["n"]))
    ranked = [(pid, statistics.pvariance(a), len(a)) for pid, a in acc.items() if len(a) >= MIN_EPOCHS]
    return sorted(ranked, key=lambda t: -t[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.analysis.one_shot", description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", help="a finished full-data RL run's model directory")
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args(argv)
    try:
        ranked = historical_variance(a.model_dir)
    except FileNotFoundError as e:
        print(f"error: {e}")
        return 2
    if not ranked:
        print(f"error: {a.model_dir}: no problem was trained on in {MIN_EPOCHS} or more epochs")
        return 2
    for pid, var, epochs in ranked[: a.top]:
        print(f"{pid}\tvariance {var:.4f}\tepochs {epochs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
