"""Checkpoint files: what they carry besides Lightning's state (the run's config, classes, input
settings and RNG states), atomic writes, safe loading, and which one a run resumes from."""

from __future__ import annotations

import io
import logging
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from classifier.errors import UserError, first_line_of, pickled_code_line
from classifier.files import existing_file, expand_path, write_atomically
from classifier.run.changed_config import report_config_changes

log = logging.getLogger(__name__)

LAST = Path("checkpoints") / "last.ckpt"
BEST = Path("checkpoints") / "best.ckpt"
# Beside Lightning's keys: the run (config, class names, input settings) that eval.py, predict.py
# and export.py rebuild the model from, and the RNG states a resumed run continues with.
RUN_KEY = "classifier"
RNG_KEY = "rng_states"
RUN_FIELDS = ("config", "class_names", "input")
# Seconds spent training so far, in the run metadata of every checkpoint (model_card.yaml reports it).
TRAIN_SECONDS_KEY = "train_seconds"
# The tracker runs (MLflow) that trained the checkpoint, in its run metadata when it has any.
TRACKERS_KEY = "trackers"
# The teacher of a distilled run (engine.distillation.Distillation.identity: its spec and sha256),
# in its run metadata: a resume checks the teacher file is the same.
DISTILLATION_KEY = "distillation"
# What to do with a checkpoint that holds code (errors.pickled_code_line).
RESAVE_ADVICE = (
    "ckpt_path takes a checkpoint written by train.py; weights from elsewhere go in as model.weights=PATH"
    " once re-saved as a state_dict: torch.save(model.state_dict(), PATH)"
)
# Set in the run metadata by temperature scaling (calibrate=true); absent means 1.
TEMPERATURE_KEY = "temperature"


def run_metadata(
    config: dict[str, Any], class_names: list[str], input_spec: dict[str, Any]
) -> dict[str, Any]:
    return {"config": config, "class_names": list(class_names), "input": input_spec}


def add_run_state(checkpoint: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Put the run's metadata and the current RNG states into a checkpoint Lightning is saving."""
    checkpoint[RUN_KEY] = metadata
    checkpoint[RNG_KEY] = collect_rng_states()


def saved_run(checkpoint: dict[str, Any], what: str) -> dict[str, Any]:
    """The run metadata of a checkpoint read by `_read`.

    Raises:
        UserError: it lacks the config, class names or input settings.
    """
    saved = checkpoint.get(RUN_KEY)
    if not isinstance(saved, dict) or not all(key in saved for key in RUN_FIELDS):
        raise UserError(f"{what} lacks the run config, class names or input settings")
    return saved


def saved_temperature(saved: dict[str, Any], what: str) -> float:
    """The temperature a checkpoint's run metadata holds (1.0 when it was never calibrated).

    Raises:
        UserError: it is not a positive finite number.
    """
    value = saved.get(TEMPERATURE_KEY, 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise UserError(f"{what} holds temperature={value!r}, which is not a positive number")
    return float(value)


def save_atomically(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` through `write_atomically`: a crash leaves the old file or the new."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomically(buffer.getvalue(), Path(path))


def save_with_temperature(source: str | Path, temperature: float, destination: str | Path) -> None:
    """Write `source`'s checkpoint to `destination` (atomically; it may be `source` itself) with
    `temperature` in its run metadata, where eval.py and predict.py read it."""
    checkpoint = load_checkpoint(source)
    checkpoint[RUN_KEY][TEMPERATURE_KEY] = float(temperature)
    save_atomically(checkpoint, destination)


def collect_rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and tuples, loadable with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, writing through `write_atomically`.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in the
    system temp dir: across file systems the final move is a copy, and nothing is fsynced, so a
    kill -9 mid-write can leave a truncated last.ckpt.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        save_atomically(checkpoint, path)


def _read(path: Path, what: str, mmap: bool = False) -> dict[str, Any]:
    """torch.load with weights_only=True; `what` names the file in the error ('ckpt_path=...')."""
    if not zipfile.is_zipfile(path):  # what torch.save writes; a truncated copy has lost its index
        raise UserError(
            f"{what} is not a readable checkpoint: not a torch.save archive (truncated, or another file)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        line = (
            pickled_code_line(exc, what, RESAVE_ADVICE)
            or f"{what} is not a readable checkpoint: {first_line_of(exc)}"
        )
        raise UserError(line) from exc
    if not isinstance(checkpoint, dict) or RUN_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"{what} is not a checkpoint written by train.py (no run config inside)")
    return checkpoint


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by train.py, loaded with weights_only=True.

    Raises:
        UserError: the file is missing, unreadable, or not a checkpoint of this framework.
    """
    path = existing_file(expand_path(path), "ckpt_path")  # expanded first: the line names the file
    return _read(path, f"ckpt_path={path}")


def resume_checkpoint(output_dir: str | Path, resume: bool | str, ckpt_path: str | None) -> str | None:
    """The checkpoint `trainer.fit` should resume from, if any.

    Args:
        output_dir: the run directory.
        resume: 'auto' (last.ckpt when there is one), True (last.ckpt must exist) or False.
        ckpt_path: an explicit checkpoint, which wins over `resume`.

    Raises:
        UserError: the explicit checkpoint is missing, `resume` is not one of the three values,
            or resume=true finds no last.ckpt.
    """
    if ckpt_path:
        path = existing_file(ckpt_path, "ckpt_path")
        log.info("resuming from ckpt_path=%s", path)
        return str(path)
    if resume not in ("auto", True, False):
        raise UserError(f"resume={resume!r} is not one of auto, true, false")
    last = Path(output_dir) / LAST
    if resume is False:
        if last.exists():
            log.info("resume=false: starting over; checkpoints in %s will be replaced", last.parent)
        return None
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    if resume is True:
        raise UserError(f"resume=true but there is no {last}")
    return None


def check_resumable(
    path: str | Path,
    output_dir: str | Path,
    explicit: bool,
    class_names: list[str],
    state_dict: dict,
    config: dict[str, Any] | None = None,
    teacher: dict[str, Any] | None = None,
) -> None:
    """Make sure training can continue from `path` before Lightning tries: it must be readable, written
    by train.py, for the same classes, and hold weights of the same shapes as this run's module. With
    `config`, the settings that differ from the checkpoint's are logged with what resuming does with
    each (run.changed_config).

    Args:
        path: the checkpoint resume_checkpoint chose.
        output_dir: the run directory.
        explicit: whether the user named it with ckpt_path (else: the run dir's last.ckpt).
        class_names: this run's classes.
        state_dict: this run's module's state_dict (only the shapes are compared).
        config: this run's resolved config (engine.build.run_config).
        teacher: this run's distillation teacher (Distillation.identity), or None.

    Raises:
        UserError: one line saying which file is at fault and what to do, or which changed setting
            cannot be resumed.
    """
    path, output_dir = Path(path), Path(output_dir)
    what = f"ckpt_path={path}" if explicit else f"{path}"
    try:
        checkpoint = _read(path, what, mmap=True)  # mmap: only the headers are read
    except UserError as exc:
        if explicit:
            advice = "check the path, or leave ckpt_path unset"
        else:
            advice = f"start over with resume=false{_best_checkpoint_hint(output_dir)}"
        raise UserError(f"{exc}; {advice}") from exc.__cause__
    saved = saved_run(checkpoint, what)
    saved_classes = [str(name) for name in saved.get("class_names", [])]
    where = what if explicit else f"hydra.run.dir={output_dir}"
    other = (
        "choose another run dir (hydra.run.dir=...), or resume=false to start over in this one"
        if not explicit
        else "resume from a checkpoint of this configuration, or leave ckpt_path unset"
    )
    if saved_classes != list(class_names):
        raise UserError(
            f"{where} holds a run on other data ({_classes(saved_classes)}; this run has"
            f" {_classes(class_names)}): {other}"
        )
    # The network's weights only: metric states may come and go between versions of this code.
    expected = {key: tuple(value.shape) for key, value in state_dict.items() if key.startswith("net.")}
    found = {
        key: tuple(value.shape) for key, value in checkpoint["state_dict"].items() if key.startswith("net.")
    }
    differ = sorted(key for key in expected.keys() | found.keys() if expected.get(key) != found.get(key))
    if differ:
        key = differ[0]
        model = (saved.get("config") or {}).get("model", {}).get("name", "?")
        raise UserError(
            f"{where} holds a run of another model configuration (model {model}; {len(differ)} weights"
            f" differ, e.g. {key}: {found.get(key, 'absent')} saved, {expected.get(key, 'absent')} now):"
            f" {other}"
        )
    check_same_teacher(saved.get(DISTILLATION_KEY), teacher, where)
    if config is not None:
        report_config_changes(checkpoint, saved.get("config") or {}, config, what)


def check_same_teacher(saved: Any, current: dict[str, Any] | None, where: str) -> None:
    """Refuses to resume a distilled run with another teacher file than it was trained with.

    Raises:
        UserError: the saved teacher's sha256 differs from the current one's, or feature
            distillation (whose projection the checkpoint lacks) is added to a run trained without.
    """
    if current is None:
        return
    if not isinstance(saved, dict):
        if current["kind"] == "feature":
            raise UserError(
                f"distill=feature cannot be added when resuming {where}, trained without it (its"
                " projection is not in the checkpoint): resume=false to start over"
            )
        return
    before = saved.get("sha256") if isinstance(saved.get("sha256"), dict) else {}
    if sorted(before.values()) != sorted(current["sha256"].values()):
        raise UserError(
            f"distill.teacher={current['teacher']}: the teacher file differs from the one {where} was"
            f" trained with ({saved.get('teacher')}, sha256 {', '.join(before.values())[:16] or 'none'}...):"
            " give the same teacher, or resume=false to start over"
        )


def _classes(names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)} classes: {shown}"


def _best_checkpoint_hint(output_dir: Path) -> str:
    """How to resume from best.ckpt instead, when it is readable."""
    best = output_dir / BEST
    if not best.is_file():
        return ""
    try:
        epoch = _read(best, str(best), mmap=True).get("epoch")
    except UserError:
        return ""
    return f", or keep last.ckpt aside and resume from the best epoch ({epoch}) with ckpt_path={best}"
