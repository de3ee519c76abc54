"""Export a checkpoint: python export.py ckpt_path=PATH format=onnx|torchscript [output=model.onnx]."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from classifier.cli import prepare_argv, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> float | None:
    return run_task("export", cfg)


if __name__ == "__main__":
    prepare_argv("export", Path(__file__).with_name("conf"))
    main()
