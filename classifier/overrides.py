"""A command line's overrides checked against the config they change, before Hydra runs the task: an
unknown key or group option (with the closest valid names), a word where the config holds a number or
a flag, a value the command must set and does not, a run directory that cannot be written or is in
use by another run, a checkpoint or input that is not there (preflight). Each is refused in one line
within about a second, before torch loads and before Hydra creates the run directory.

Hydra's compose API composes the config the command would run (a sweep's first job); whatever this
check does not recognise is left to Hydra, which reports it as it always did.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir, initialize_config_module
from hydra._internal.utils import get_args_parser  # the parser @hydra.main reads flags with
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, OverrideType, RangeSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from classifier.errors import UserError
from classifier.preflight import check_before_loading
from classifier.run.directory import check_can_create, refuse_if_in_use

PACKAGE_CONFIGS = "pkg://classifier.conf"
# Config keys that moved (December 2026): the old spelling on a command line gets one line with the new.
RENAMED_KEYS = {
    "model.input_size": "data.img_size",  # the DINOv2 model configs set data.img_size themselves
    "model.open_clip": "clip",  # the CLIP model configs' section for zeroshot.py
}
# Environment variables that give a process's rank when it is not the first of a distributed run
# (Lightning's DDP launcher, torchrun, SLURM): those processes share the first one's run directory.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")
_ABSENT = object()


@dataclass
class _Hydra:
    """What Hydra's compose API knows of the config source, while it is initialised."""

    config_name: str
    groups: set[str]

    def options(self, group: str) -> list[str]:
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group, ObjectType.CONFIG))

    def compose(self, overrides: list[str]) -> DictConfig:
        return compose(self.config_name, overrides=overrides, return_hydra_config=True)


def renamed_key_line(arg: str) -> str | None:
    """The line for an override that uses a key's old name (RENAMED_KEYS), naming the new one."""
    key = arg.lstrip("+~").partition("=")[0]
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            renamed = new + key[len(old) :]
            return f"{key} is now {renamed}: write {arg.replace(key, renamed, 1)}"
    return None


def command_line_problem(argv: Sequence[str], config_name: str, config_source: str) -> str | None:
    """The one-line description of a mistake in `argv`'s overrides of `config_name` (a file of
    `config_source`: a folder, or pkg://classifier.conf; also the task's name: train, eval, ...),
    or None when there is none or when Hydra should answer (--help, a flag or override syntax it
    reports itself)."""
    for arg in argv[1:]:
        line = renamed_key_line(arg)
        if line:
            return line
    args, unknown = get_args_parser().parse_known_args(list(argv[1:]))
    answered_by_hydra = args.help or args.hydra_help or args.info or args.shell_completion
    if unknown or answered_by_hydra or args.config_path or args.config_dir or args.experimental_rerun:
        return None
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:  # Hydra's message shows where the override's syntax breaks
        return None
    task, config_name = config_name, args.config_name or config_name
    try:
        with _initialized(config_source):
            hydra = _Hydra(config_name, set(_all_groups()))
            _check_group_options(hydra, overrides)
            _check_value_types(_primary_config(config_source, config_name), overrides)
            config = _composed_or_diagnosed(hydra, overrides)
            if config is not None and not args.cfg:  # --cfg only prints the config
                _check_mandatory_values(config)
                _check_output_folder(config, args.multirun)
                _check_task_files(task, config)
    except UserError as exc:
        return str(exc)
    return None


def _initialized(config_source: str):
    if config_source.startswith("pkg://"):
        return initialize_config_module(config_source.removeprefix("pkg://"), version_base="1.3")
    return initialize_config_dir(str(Path(config_source).resolve()), version_base="1.3")


def _all_groups(parent: str = "") -> Iterator[str]:
    loader = GlobalHydra.instance().config_loader()
    for name in loader.list_groups(parent):
        group = f"{parent}/{name}" if parent else name
        if loader.get_group_options(group, ObjectType.CONFIG):
            yield group
        yield from _all_groups(group)


def _primary_config(config_source: str, config_name: str) -> DictConfig:
    """conf/<config_name>.yaml as written (its own values, before groups and overrides)."""
    if config_source.startswith("pkg://"):
        files = importlib.resources.files(config_source.removeprefix("pkg://"))
        return OmegaConf.create(files.joinpath(f"{config_name}.yaml").read_text())
    return OmegaConf.load(Path(config_source) / f"{config_name}.yaml")


def _values(override: Override) -> list[Any]:
    """The values an override gives, one per job of a sweep; [] for a sweep that is not a list of
    values (interval(), glob())."""
    value = override.value()
    if isinstance(value, ChoiceSweep | RangeSweep):
        return list(override.sweep_iterator())
    if override.is_sweep_override():
        return []
    return list(value) if isinstance(value, list) else [value]


def _closest(word: str, candidates: Sequence[str], margin: float = 0.1) -> list[str]:
    """Up to 3 of `candidates` that difflib finds close to `word`, best first, within `margin` of the
    best one's similarity (a clear best guess is named alone)."""
    ranked = sorted(
        ((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in set(candidates)),
        key=lambda rc: (-rc[0], rc[1]),
    )
    close = [(ratio, c) for ratio, c in ranked if ratio >= 0.6]
    return [c for ratio, c in close if ratio >= close[0][0] - margin][:3]


def _check_group_options(hydra: _Hydra, overrides: list[Override]) -> None:
    """Raises UserError for an option the group has no config file for (`model=resnet181`)."""
    for override in overrides:
        group = override.key_or_group
        if group not in hydra.groups or override.is_delete():
            continue
        options = hydra.options(group)
        for value in _values(override):
            if isinstance(value, str) and "/" not in value and value not in options:
                close = _closest(value, options)
                guess = f"did you mean {' or '.join(f'{group}={c}' for c in close)}? " if close else ""
                raise UserError(
                    f"{override.input_line}: the {group} group has no option '{value}'; {guess}"
                    f"{group} options: {', '.join(options)}"
                )


def _check_value_types(primary: DictConfig, overrides: list[Override]) -> None:
    """Raises UserError for a word given to a top-level key whose value in the config file is a
    number or a flag (`seed=abc`); Hydra takes any value, and the task would fail only later."""
    defaults = OmegaConf.to_container(primary, resolve=False)
    for override in overrides:
        key = override.key_or_group
        if override.type != OverrideType.CHANGE or "." in key or key not in defaults:
            continue
        default = defaults[key]
        for value in _values(override):
            expected = _expected_kind(default, value)
            if expected:
                shown = OmegaConf.to_yaml({key: default}).strip()
                raise UserError(f"{override.input_line}: {key} takes {expected} (conf: {shown})")


def _expected_kind(default: Any, value: Any) -> str | None:
    """What `value` should have been, when it does not fit the kind of `default`; None when it fits."""
    if value is None or (isinstance(value, str) and "${" in value):  # null, or an interpolation
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if _reads_as(int, value) else "a whole number"
    if isinstance(default, float):
        return None if _reads_as(float, value) else "a number"
    return None


def _reads_as(kind: type, value: Any) -> bool:
    """Whether `value` is a number of `kind` (an int is a float too), or a quoted one ('42')."""
    if isinstance(value, bool) or isinstance(value, float) and kind is int:
        return False
    try:
        kind(str(value))
    except ValueError:
        return False
    return True


def _first_job(hydra: _Hydra, overrides: list[Override], keep_keys: bool = True) -> list[str]:
    """The overrides of a sweep's first job, as strings Hydra's compose takes; without `keep_keys`
    only the group choices (the config as it is before any key is changed)."""
    job = []
    for override in overrides:
        if not keep_keys and override.key_or_group not in hydra.groups:
            continue
        if not override.is_sweep_override():
            job.append(override.input_line)
        elif isinstance(override.value(), ChoiceSweep | RangeSweep):
            first = next(iter(override.sweep_string_iterator()))
            job.append(f"{override.get_key_element()}={first}")
    return job


def _composed_or_diagnosed(hydra: _Hydra, overrides: list[Override]) -> DictConfig | None:
    """The config of the command's (first) job. When Hydra cannot compose it, raises UserError for
    the key override that names no key of the config; None when the fault is another one (Hydra
    then reports it in its own words)."""
    try:
        return hydra.compose(_first_job(hydra, overrides))
    except Exception:  # whatever Hydra raises here, it says again when it composes the config
        pass
    try:
        before_keys = hydra.compose(_first_job(hydra, overrides, keep_keys=False))
    except Exception:  # as above: Hydra reports it
        return None
    for override in overrides:
        if override.key_or_group in hydra.groups:
            continue
        if override.type == OverrideType.ADD:
            _check_key_is_new(hydra, before_keys, override)
        elif override.type != OverrideType.FORCE_ADD:
            _check_key_exists(hydra, before_keys, override)
    return None


def _check_key_is_new(hydra: _Hydra, config: DictConfig, override: Override) -> None:
    """Raises UserError when `+key=value` adds a key the config already has."""
    key = override.key_or_group
    if OmegaConf.select(config, key, default=_ABSENT, throw_on_resolution_failure=False) is not _ABSENT:
        value = override.input_line.partition("=")[2]
        raise UserError(
            f"{override.input_line}: {hydra.config_name}.yaml already has {key}: write {key}={value}"
            " (+ adds a key the config does not have)"
        )


def _check_key_exists(hydra: _Hydra, config: DictConfig, override: Override) -> None:
    """Raises UserError, naming the closest keys, when `override` changes or deletes a key that
    `config` (composed with the command's group choices) does not have."""
    key = override.key_or_group
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(config, parent) if parent else config
    # keys(), not `in node`: a key whose value is ??? (missing) is not "in" a DictConfig
    if isinstance(node, DictConfig) and name in node.keys():  # noqa: SIM118
        return
    if isinstance(node, DictConfig) and not OmegaConf.is_struct(node):
        return  # an open section takes new keys
    keys = _dotted_keys(OmegaConf.to_container(config), hidden="" if key.startswith("hydra.") else "hydra")
    if not parent:
        keys += sorted(group for group in hydra.groups if "/" not in group and group not in keys)
    close = _suggestions(key, keys)
    where = f"{hydra.config_name}.yaml"
    if close:
        guesses = _groups_with_the_value(hydra, keys, override) + close
        raise UserError(
            f"{override.input_line}: {where} has no key '{key}'; did you mean"
            f" {' or '.join(f'{guess}=' for guess in dict.fromkeys(guesses))}?"
        )
    siblings = sorted(node.keys()) if isinstance(node, DictConfig) else []
    listed = f" (keys of {parent or 'the top level'}: {', '.join(map(str, siblings))})" if siblings else ""
    adding = "" if override.is_delete() else f"; to add a key on purpose: +{key}=..."
    raise UserError(f"{override.input_line}: {where} has no key '{key}'{listed}{adding}")


def _groups_with_the_value(hydra: _Hydra, keys: list[str], override: Override) -> list[str]:
    """The groups whose name is close to the override's key and that have its value as an option:
    `modle=resnet18` means `model=`, though `module` is a closer spelling."""
    values = _values(override)
    close = _closest(override.key_or_group, [k for k in keys if k in hydra.groups], margin=1.0)
    return [group for group in close if values and all(v in hydra.options(group) for v in values)]


def _suggestions(key: str, keys: list[str]) -> list[str]:
    """The keys of `key`'s own section closest to it; else the keys whose last part is closest to its
    last part (a key written without its section: max_epochs=3 for trainer.max_epochs)."""
    section = key.rpartition(".")[0]
    close = _closest(key, [k for k in keys if k.rpartition(".")[0] == section])
    if close:
        return close
    names = _closest(key.rpartition(".")[2], [k.rpartition(".")[2] for k in keys])
    return [k for k in keys if k.rpartition(".")[2] in names][:3]


def _dotted_keys(container: Mapping[str, Any], prefix: str = "", hidden: str = "") -> list[str]:
    """Every key of a nested mapping as a dotted path; the top-level section `hidden` left out."""
    keys = []
    for name, value in container.items():
        if not prefix and name == hidden:
            continue
        path = f"{prefix}.{name}" if prefix else str(name)
        keys.append(path)
        if isinstance(value, Mapping):
            keys += _dotted_keys(value, path)
    return keys


def _check_mandatory_values(config: DictConfig) -> None:
    """Raises UserError for the keys the command must set and does not (`???` in the config)."""
    plain = OmegaConf.to_container(config, resolve=False)  # ??? stays as it is written
    missing = [key for key in _dotted_keys(plain, hidden="hydra") if _value_at(plain, key) == "???"]
    if missing:
        keys = ", ".join(f"'{key}'" for key in sorted(missing))
        raise UserError(
            f"missing value for {keys}: set it on the command line, e.g. {sorted(missing)[0]}=..."
        )


def _value_at(container: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        container = container[part]
    return container


def _check_output_folder(config: DictConfig, multirun: bool) -> None:
    """Raises UserError when the run (or sweep) directory Hydra is about to create cannot be
    created and written, or when another run holds it: before Hydra writes its .hydra/ files there."""
    multirun = multirun or str(config.hydra.get("mode")).endswith("MULTIRUN")  # RunMode.MULTIRUN
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        folder = OmegaConf.select(config, key, throw_on_resolution_failure=True)
    except OmegaConfBaseException:  # ${hydra:...} and the like: known only once Hydra runs
        return
    if not folder:
        return
    check_can_create(Path(str(folder)), f"{key}={folder}")
    if not multirun and not _later_rank():
        refuse_if_in_use(Path(str(folder)))


def _check_task_files(task: str, config: DictConfig) -> None:
    """preflight.check_before_loading on the composed config: a missing checkpoint or input, or an
    output file that cannot be written, refused before Hydra creates the run directory."""
    try:
        check_before_loading(task, config)
    except OmegaConfBaseException:  # a value built from Hydra's runtime: the task checks it
        return


def _later_rank() -> bool:
    """Whether this process is not the first of a distributed run (it shares that one's run dir)."""
    return any(os.environ.get(name, "0") != "0" for name in _RANK_VARIABLES)
