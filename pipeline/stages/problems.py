"""The problems stage: every task's train and test problems, written once per study."""
from __future__ import annotations

import pandas as pd

from pipeline.core import tracking
from pipeline.core.io import write_jsonl
from pipeline.stages.base import Stage
from tasks import problems_for


class Problems(Stage):
    stage, sections = "problems", ("tasks",)

    def execute(self, tmp, run_id):
        info = {}
        for split in ("train", "test"):
            probs = problems_for(self.cfg.tasks, split)
            write_jsonl(tmp / f"{split}.jsonl", (p.to_dict() for p in probs))
            df = pd.DataFrame([dict(id=p.id, task=p.task, difficulty=p.difficulty, question=p.question,
                                    answer=p.answer) for p in probs])
            tracking.log_dataset(self.cfg, run_id, df, f"problems-{split}", str(self.out_dir / f"{split}.jsonl"),
                                 "training" if split == "train" else "testing")
            info[f"{split}_problems"] = len(probs)
        tracking.log(self.cfg, run_id, params={"tasks": [t.model_dump() for t in self.cfg.tasks]},
                     metrics=[(f"{k}", v, 0) for k, v in info.items()])
        return info
