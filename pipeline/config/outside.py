"""The config's `outside:` section: models a study evaluates but does not train (published checkpoints),
each a row of every table, analysis and verdict (pipeline.arms.rows), and the check of their names."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.core.models import check_model_ref


class OutsideModel(BaseModel):
    """A model the study evaluates but does not train (a published checkpoint): a row of every table,
    analysis and verdict, compared with the model it was trained from."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$")  # its name in every table, plot and verdict
    ref: str  # a model directory, a hub id org/name, a .gguf file or package:<package>/<file>.gguf
    trained_from: str = Field("base", alias="from")  # base, or an outside model listed before it
    label: str = Field(min_length=1)  # what it is, e.g. "GRPO, SimpleRL-Zoo"

    _check_ref = field_validator("ref")(classmethod(lambda cls, v: check_model_ref(v)))


def check_outside(cfg):
    """An outside model's name is a row of its own: not base, teacher, a sharpened base, an arm or another
    outside model; its `from` is the base or an outside model listed before it."""
    from pipeline.arms import arms

    taken = {"base": "the base model", "teacher": "the teacher",
             **{m: "a sharpened base row (eval.sharpened_temperatures)" for m in cfg.eval.sharpened_models()},
             **{a: "an arm" for a in arms()}}
    for i, o in enumerate(cfg.outside):
        if o.name in taken:
            raise ValueError(f"outside[{i}].name: {o.name!r} is taken by {taken[o.name]} (expected another name)")
        if o.trained_from != "base" and not any(p.name == o.trained_from for p in cfg.outside[:i]):
            raise ValueError(f"outside[{i}].from: {o.trained_from!r} is not base or an outside model listed before "
                             f"{o.name!r} (expected the model it was trained from)")
        taken[o.name] = f"outside[{i}]"
    return cfg
