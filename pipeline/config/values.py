"""Reading values: YAML files and the command line's KEY=VALUE assignments.

- `load_yaml`: a key given twice in one mapping is refused (plain YAML lets the last one win, so a
  sweep would silently lose a member), and `1e3` is read as the number it looks like (YAML 1.1 reads
  it as a string, which a number field then refuses with "unable to parse string").
- `parse_assignments`: `--set KEY=VALUE` and `--sweep KEY=V1,V2`, each value read as YAML; the
  values of a `--sweep` are split at the commas outside brackets and quotes, so
  `--sweep 'tasks.0.levels=[1,2],[3,4]'` is two values; a key swept twice is refused.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.sections import ConfigError


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden, by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}:{line}: {key}: the key appears twice in one mapping (first on line "
                                  f"{seen[key]}); expected each key once (the second would silently replace the first)")
            seen[key] = line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*)(?:\.\d*)?[eE][-+]?\d+$"),
                              list("-+0123456789"))


def load_yaml(text: str, source: str = "<string>") -> Any:
    """YAML text (safe) with duplicate keys refused and `1e3` a number; ConfigError names `source`."""
    loader = _Loader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    return load_yaml(p.read_text(), str(p))


def split_values(text: str) -> list[str]:
    """`a,b` -> [a, b], leaving commas inside [], {}, () and quotes alone: `[1,2],[3,4]` -> two values."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    return out + [cur]


def parse_value(text: str, flag: str, key: str) -> Any:
    try:
        return load_yaml(text, f"{flag} {key}")
    except ConfigError as e:
        why = str(e).split("not valid YAML: ", 1)[-1]
        raise ConfigError(f"{flag} {key}={text!r}: not a valid YAML value ({why}); expected e.g. 3, 0.5, abc or "
                          f"[1, 2] (quote the whole argument in the shell)") from None


def parse_assignments(items: list[str], flag: str) -> dict[str, list]:
    """{dotted key: [values]} of `--set KEY=VALUE` (one value) or `--sweep KEY=V1,V2,...` arguments."""
    out: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE (dotted key, e.g. rl.beta=0.04)")
        key, value = item.split("=", 1)
        if key in out and flag == "--sweep":
            raise ConfigError(f"{flag} {key}: swept twice; expected each key once, with all its values "
                              f"(e.g. --sweep {key}=V1,V2,V3)")
        values = split_values(value) if flag == "--sweep" else [value]
        out[key] = [parse_value(v, flag, key) for v in values]
    return out
