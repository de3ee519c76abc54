"""A resumed run whose config differs from its checkpoint's: which settings changed, and what the
resumed run does with each (what Lightning and torch restore over the new config, and what they
leave to it), said in one WARNING before training goes on."""

from __future__ import annotations

import logging
from typing import Any

from classifier.errors import UserError

log = logging.getLogger(__name__)

# Keys that name where this run is or reports to, not how it trains: they differ whenever a run dir
# moves, and the trackers' run names follow the command line's overrides.
NOT_COMPARED = ("paths", "hydra", "resume", "ckpt_path", "trainer.default_root_dir", "logger")
UNSET = "(unset)"


def flat_settings(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested config as {"trainer.max_epochs": 10, ...}; lists are one value."""
    settings = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            settings.update(flat_settings(value, f"{name}."))
        else:
            settings[name] = value
    return settings


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, current value)} for each setting that differs, UNSET where one has none."""
    old, new = flat_settings(saved), flat_settings(current)
    changed = {}
    for key in sorted(old.keys() | new.keys()):
        if any(key == skip or key.startswith(f"{skip}.") for skip in NOT_COMPARED):
            continue
        before, after = old.get(key, UNSET), new.get(key, UNSET)
        if before != after:
            changed[key] = (before, after)
    return changed


def epochs_done(checkpoint: dict[str, Any]) -> int | None:
    """Whole epochs a checkpoint had trained (Lightning's fit loop state); None when it lacks one."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None


def has_fixed_length_schedule(checkpoint: dict[str, Any]) -> bool:
    """Whether the saved schedule carries its own length (torch's OneCycleLR: total_steps), which
    loading it restores over the one the new config computes."""
    return any("total_steps" in state for state in checkpoint.get("lr_schedulers") or [])


def _schedule_note(checkpoint: dict[str, Any], config: dict[str, Any]) -> str:
    if not config.get("scheduler") or not checkpoint.get("lr_schedulers"):
        return ""
    if has_fixed_length_schedule(checkpoint):
        return "; the checkpoint's schedule keeps its own length (scheduler=onecycle)"
    return (
        f"; the learning-rate schedule is recomputed for the new length and goes on from step"
        f" {checkpoint.get('global_step', '?')} (after a finished decay, the learning rate rises again)"
    )


def _max_epochs_outcome(new: Any, checkpoint: dict[str, Any], config: dict[str, Any], where: str) -> str:
    done = epochs_done(checkpoint)
    if new is None or new == -1:
        return "used: training goes on without an epoch limit" + _schedule_note(checkpoint, config)
    if done is not None and done > new:
        raise UserError(
            f"trainer.max_epochs={new} but {where} has trained {done} epochs already: set"
            f" trainer.max_epochs={done} or more to continue it, or resume=false to start over"
        )
    if done is not None and done == new:
        return f"used: the checkpoint has trained all {new} epochs: no training; its best one is evaluated"
    if has_fixed_length_schedule(checkpoint):
        raise UserError(
            f"trainer.max_epochs={new}: {where} holds a one-cycle schedule of a fixed length, which"
            " cannot be stretched (torch's OneCycleLR stops at its last step): keep the checkpoint's"
            " trainer.max_epochs, or resume=false to start over"
        )
    return f"used: training continues to epoch {new}" + _schedule_note(checkpoint, config)


def change_outcome(key: str, new: Any, checkpoint: dict[str, Any], config: dict[str, Any], where: str) -> str:
    """What the resumed run does with `key` set to `new` (checked against Lightning 2.6 and torch 2.x:
    Trainer.fit(ckpt_path=...) restores the optimizer, schedule, loop and RNG states after the
    objects are built from the new config).

    Raises:
        UserError: the change cannot be resumed (fewer epochs than done; a fixed-length schedule
            lengthened).
    """
    if key == "trainer.max_epochs":
        return _max_epochs_outcome(new, checkpoint, config, where)
    if key == "trainer.max_steps":
        return "used" + _schedule_note(checkpoint, config)
    if key.startswith("optimizer."):
        # torch's Optimizer.load_state_dict replaces the param groups' lr, weight decay, betas...
        # and the schedule's base learning rates come back from the checkpoint too
        return (
            "not used: the checkpoint's optimizer state (learning rate, weight decay, moments) and"
            " schedule are restored over it; resume=false starts over with it"
        )
    if key.startswith("scheduler."):
        if has_fixed_length_schedule(checkpoint):
            return "not used: the checkpoint's one-cycle schedule is restored over it"
        return "used from the checkpoint's step on (the schedule's step count comes from the checkpoint)"
    if key == "seed":
        return "not used: the random states come from the checkpoint"
    if key.startswith("tune."):
        return "not used: a resumed run keeps the learning rate and batch size its first run was given"
    if key.startswith("data."):
        return "used: the resumed run trains on the data as now configured"
    if key.startswith("model."):
        return "used, with the checkpoint's weights"
    return "used from here on"


def _shown(value: Any) -> str:
    return value if value == UNSET else repr(value)


def report_config_changes(
    checkpoint: dict[str, Any], saved_config: dict[str, Any], config: dict[str, Any], where: str
) -> None:
    """One WARNING listing each setting of `config` that differs from the checkpoint's
    `saved_config` (old -> new) and what the resumed run does with it; `where` names the checkpoint.

    Raises:
        UserError: a change the run cannot be resumed with (see change_outcome).
    """
    changes = changed_settings(saved_config, config)
    if not changes:
        return
    lines = [
        f"  {key}: {_shown(old)} -> {_shown(new)}: {change_outcome(key, new, checkpoint, config, where)}"
        for key, (old, new) in changes.items()
    ]
    log.warning(
        "%d setting(s) differ from those %s was trained with:\n%s", len(changes), where, "\n".join(lines)
    )
