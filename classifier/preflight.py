"""What a task reads and writes, checked before it imports torch and Lightning (seconds of CPU): a
checkpoint or input that is not there, an output file that could not be written. The task checks
them again where it uses them; this only makes the refusal come at once."""

from __future__ import annotations

from omegaconf import DictConfig

from classifier.errors import UserError
from classifier.files import existing_file, expand_path
from classifier.run.directory import check_can_create

# Keys that name a file a task writes (beside its run directory, which Hydra has created).
OUTPUT_KEYS = {"predict": ("output",), "export": ("output",)}
# Keys that name images a task reads: a file, a folder or a glob.
INPUT_KEYS = {"predict": ("input",), "export": ("check_input",)}


def check_before_loading(task: str, cfg: DictConfig) -> None:
    """Raises UserError for a ckpt_path or input of `task` that does not exist, or an output file
    that cannot be written."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        existing_file(ckpt_path, "ckpt_path")
    for key in INPUT_KEYS.get(task, ()):
        if cfg.get(key):
            _check_images_exist(str(cfg.get(key)), key)
    for key in OUTPUT_KEYS.get(task, ()):
        if cfg.get(key):
            path = expand_path(cfg.get(key))
            check_can_create(path.parent, f"{key}={cfg.get(key)}")


def _check_images_exist(pattern: str, key: str) -> None:
    # A glob is matched when the task runs; a plain path must be there.
    path = expand_path(pattern)
    if not any(char in str(path) for char in "*?[") and not path.exists():
        raise UserError(f"{key}={pattern} does not exist (looked for {path.resolve()})")
