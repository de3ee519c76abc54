"""Checkpoint files: atomic writes, safe loading, and which one a run resumes from."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from classifier.atomic import write_atomically
from classifier.errors import UserError

log = logging.getLogger(__name__)

LAST = Path("checkpoints") / "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, writing through `write_atomically`.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in the
    system temp dir: across file systems the final move is a copy, and nothing is fsynced, so a
    kill -9 mid-write can leave a truncated last.ckpt.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(buffer.getvalue(), path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by train.py, loaded with weights_only=True.

    Raises:
        UserError: the file is missing, unreadable, or not a checkpoint of this framework.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"ckpt_path={path} does not exist (looked for {path.resolve()})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"ckpt_path={path} is not a readable checkpoint: {reason}") from exc
    if not isinstance(checkpoint, dict) or "classifier" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"ckpt_path={path} is not a checkpoint written by train.py (no run config inside)")
    return checkpoint


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
        if not Path(ckpt_path).expanduser().is_file():
            raise UserError(f"ckpt_path={ckpt_path} does not exist")
        log.info("resuming from ckpt_path=%s", ckpt_path)
        return str(Path(ckpt_path).expanduser())
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
