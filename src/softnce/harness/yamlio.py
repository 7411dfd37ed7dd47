"""Reading configs: the built-in presets (package data), a YAML loader that refuses alias bombs
and oversized files and reads exponent floats as numbers, ``base:`` inheritance."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The built-in presets: YAML files shipped inside the package (``softnce/configs/``), so
#: ``--config NAME`` works from a wheel install, in any folder.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Old name of :data:`CONFIG_DIR` (the presets used to live in the repository root).
REPO_CONFIG_DIR = CONFIG_DIR

#: YAML documents may hold at most this many nodes once aliases are expanded (alias bombs).
YAML_MAX_NODES = 100_000
#: Longest YAML config file read (bytes).
YAML_MAX_BYTES = 4 * 1024 * 1024


class ConfigError(ValueError):
    """An invalid configuration key, value or combination (reported as a usage error)."""


# ---------------------------------------------------------------------- YAML I/O
def find_preset(name: str) -> Path:
    """A config file: an existing path, or the name of a built-in preset (``softnce/configs/``,
    e.g. ``digits-soft-infonce`` or ``paper/imagenet-nll``)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    # "configs/paper/x.yaml" (the presets' old place in the repository) names a built-in too
    rel = name[len("configs/"):] if name.startswith("configs/") else name
    for cand in (CONFIG_DIR / rel, CONFIG_DIR / f"{rel}.yaml"):
        if cand.is_file():
            return cand
    presets = sorted(str(q.relative_to(CONFIG_DIR).with_suffix("")) for q in CONFIG_DIR.rglob("*.yaml")) if CONFIG_DIR.is_dir() \
        else []
    hint = f"; presets in {CONFIG_DIR}: {', '.join(presets)}" if presets else ""
    raise ConfigError(f"config file {name!r} not found{hint}")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


_EXP_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$""")
_LOADER: Any = None


def _safe_loader() -> Any:
    """A ``yaml.SafeLoader`` subclass that (1) reads exponent floats without a dot (``5e-1``,
    ``1e3``; YAML 1.1 would read them as strings) and (2) refuses documents that expand to more
    than :data:`YAML_MAX_NODES` nodes through aliases (a "billion laughs" alias bomb) or whose
    aliases form a cycle."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class _Loader(yaml.SafeLoader):
        def construct_document(self, node: Any) -> Any:
            _check_expanded_size(node, self.__dict__.get("_softnce_source", "YAML"))
            return super().construct_document(node)

    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT,
                                  list("-+0123456789."))
    _LOADER = _Loader
    return _Loader


def _check_expanded_size(root: Any, source: str) -> None:
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{source}: YAML aliases form a cycle (recursive structure)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > YAML_MAX_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > YAML_MAX_NODES:
                    break
        active.discard(key)
        if total > YAML_MAX_NODES:
            raise ConfigError(f"{source}: YAML document expands to more than {YAML_MAX_NODES} "
                              f"nodes (alias bomb?); refusing to read it")
        sizes[key] = total
        return total

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        size(root)
    except RecursionError:
        raise ConfigError(f"{source}: YAML document is nested too deeply") from None
    finally:
        sys.setrecursionlimit(limit)


def _yaml_load(text: str, source: str) -> Any:
    loader = _safe_loader()(text)
    loader._softnce_source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, following ``base:`` (a path or list of paths relative to the file)."""
    from softnce._optional import require

    yaml = require("yaml", "train", "reading YAML configs")

    path = find_preset(str(path)).resolve()
    if path in _seen:
        raise ConfigError(f"config 'base:' cycle: {' -> '.join(map(str, (*_seen, path)))}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    if len(raw) > YAML_MAX_BYTES:
        raise ConfigError(f"config file {path} is larger than {YAML_MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e})") from None
    try:
        data = _yaml_load(text, str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path} as YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping; found {type(data).__name__}")
    # ``base:`` as a path (or list of paths) is inheritance; a mapping (compare configs) is data
    bases = data.pop("base") if isinstance(data.get("base"), (str, list)) else None
    merged: dict[str, Any] = {}
    for b in [bases] if isinstance(bases, str) else (bases or []):
        bp = Path(b) if Path(b).is_absolute() else path.parent / b
        merged = _merge(merged, load_yaml(bp, (*_seen, path)))
    return _merge(merged, data)


