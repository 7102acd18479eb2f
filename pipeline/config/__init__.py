"""The experiment config (schema.py; model references checked by pipeline/core/models.py) and sweeps (sweep.py). The schema's names are re-exported here,
so `from pipeline.config import ExperimentConfig, load_config` keeps working. ExperimentConfig is built
on first use from the registered arms (their sections), and an arm's section model is found by its
class name (e.g. `from pipeline.config import RLConfig`), both through `__getattr__`."""
from pipeline.core.models import HUB_ID, check_model_dir, check_model_ref, tokenizer_mismatch  # noqa: F401
from pipeline.config.schema import (  # noqa: F401
    MIN_BOOTSTRAP, ComputeConfig, ConfigError, EvalConfig, GenerationConfig, HealthConfig, OutsideModel, Strict, TaskSpec,
    TracesConfig, TrackingConfig, _format_error, experiment_config, load_config, parse_config, set_dotted,
)


def __getattr__(name: str):
    if name == "ExperimentConfig":
        return experiment_config()
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from pipeline.arms import arms

    for arm in arms().values():
        if arm.config.__name__ == name:
            return arm.config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
