"""Zero-shot vs K-shot probe vs fine-tune table: python fewshot.py model=clip_b16 data=... shots=[1,4,16]."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from classifier.cli import prepare_argv, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="fewshot")
def main(cfg: DictConfig) -> float | None:
    return run_task("fewshot", cfg)


if __name__ == "__main__":
    prepare_argv("fewshot", Path(__file__).with_name("conf"))
    main()
