"""Evaluate a checkpoint on its held-out split(s): python eval.py ckpt_path=PATH [data.root=...]."""

import hydra
from omegaconf import DictConfig

from classifier.cli import run_task
from classifier.training import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
