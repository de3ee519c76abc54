"""CLIP zero-shot classification: python zeroshot.py model=clip_b32 data=... [templates=[...]]."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from classifier.cli import prepare_argv, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="zeroshot")
def main(cfg: DictConfig) -> float | None:
    return run_task("zeroshot", cfg)


if __name__ == "__main__":
    prepare_argv("zeroshot", Path(__file__).with_name("conf"))
    main()
