"""Train an image classifier: python train.py [group=option] [key=value] (see README.md)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from classifier.cli import prepare_argv, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_task("train", cfg)


if __name__ == "__main__":
    prepare_argv("train", Path(__file__).with_name("conf"))
    main()
