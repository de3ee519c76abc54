"""Data audit before training: python audit.py data=... [model=... model.weights=F]"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from classifier.cli import prepare_argv, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="audit")
def main(cfg: DictConfig) -> float | None:
    return run_task("audit", cfg)


if __name__ == "__main__":
    prepare_argv("audit", Path(__file__).with_name("conf"))
    main()
