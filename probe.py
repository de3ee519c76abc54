"""Linear probe or k-NN on frozen features: python probe.py model=dinov2_s data=... method=linear|knn."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from classifier.cli import prepare_argv, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="probe")
def main(cfg: DictConfig) -> float | None:
    return run_task("probe", cfg)


if __name__ == "__main__":
    prepare_argv("probe", Path(__file__).with_name("conf"))
    main()
