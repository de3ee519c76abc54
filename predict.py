"""Predict classes of images: python predict.py ckpt_path=PATH input=FILE|DIR|GLOB [output=preds.csv]."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from classifier.cli import prepare_argv, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> float | None:
    return run_task("predict", cfg)


if __name__ == "__main__":
    prepare_argv("predict", Path(__file__).with_name("conf"))
    main()
