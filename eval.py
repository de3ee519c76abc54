"""Evaluate a checkpoint on its held-out split(s): python eval.py ckpt_path=PATH [data.root=...]."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from classifier.cli import prepare_argv, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return run_task("eval", cfg)


if __name__ == "__main__":
    prepare_argv("eval", Path(__file__).with_name("conf"))
    main()
