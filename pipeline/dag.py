"""The Luigi DAG: Problems -> GenerateTeacherTraces -> FilterTraces -> Train(sft)
                                  Problems [-> FilterRLProblems] -> Train(rl), Train(distill)   (in parallel)
          Evaluate(base | teacher | every arm [| its snapshots] [| base at sharpened temperatures])
              -> Perplexity [-> Adaptive] -> Report

    luigi --module pipeline.dag Report --config configs/tiny.yaml --local-scheduler --workers 2

Each task is thin: requires/output/run around a stage function. A stage's identity is a hash of
the config parts it reads plus its upstream identities, and its output lives in
runs/<experiment>/<stage>-<hash>/, written under a temporary name and renamed when complete.
Heavy stages (sampling, training) run as their own process; the scheduler process never
imports CUDA or vLLM.

The tasks live in pipeline/stages/, one file per node (named as its output directory and MLflow
run), each beside the function or CLI it runs; this module re-exports them, so that
`luigi --module pipeline.dag <Task>` and `from pipeline.dag import <Task>` find every one.
"""
from pipeline.stages.adaptive import Adaptive  # noqa: F401
from pipeline.stages.base import WORK_SUFFIXES, Stage, load_problems, log_model, stage_info  # noqa: F401
from pipeline.stages.convert import ConvertModel  # noqa: F401
from pipeline.stages.evaluate import EVAL_SAMPLING, Evaluate  # noqa: F401
from pipeline.stages.filtered import FilterTraces  # noqa: F401
from pipeline.stages.perplexity import Perplexity, report_models  # noqa: F401
from pipeline.stages.problems import Problems  # noqa: F401
from pipeline.stages.report import Report, snapshot_evals  # noqa: F401
from pipeline.stages.rlprompts import FilterRLProblems  # noqa: F401
from pipeline.stages.study import Study  # noqa: F401
from pipeline.stages.traces import GenerateTeacherTraces  # noqa: F401
from pipeline.stages.train import Train  # noqa: F401
