"""The experiment config (schema.py) and sweeps (sweep.py). The schema's names are re-exported here,
so `from pipeline.config import ExperimentConfig, load_config` keeps working."""
from pipeline.config.schema import (  # noqa: F401
    HUB_ID, MIN_BOOTSTRAP, ComputeConfig, ConfigError, DistillConfig, EvalConfig, ExperimentConfig, GenerationConfig,
    HealthConfig, RLConfig, SFTConfig, Strict, TaskSpec, TracesConfig, TrackingConfig, _format_error, check_model_dir,
    check_model_ref, curriculum_error, load_config, parse_config, set_dotted, tokenizer_mismatch,
)
