"""python -m classifier.data.convert SRC_IMAGE_FOLDER OUT_DIR_OR_URI: an ImageFolder tree as LitData
chunks for data=litdata (classifier/data/streaming.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from classifier.data.streaming import convert_image_folder
from classifier.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m classifier.data.convert",
        description="Convert an ImageFolder tree into LitData chunks for data=litdata.",
    )
    parser.add_argument("source", help="an ImageFolder root: train/<class>/*, optional val/ and test/")
    parser.add_argument("output", help="a folder, or an object-storage URI such as s3://bucket/prefix")
    parser.add_argument("--val-split", type=float, default=0.1, help="of train, when there is no val/")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="conversion processes (default 1)")
    parser.add_argument("--chunk-bytes", default="64MB")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        info = convert_image_folder(
            args.source, args.output, args.val_split, args.split_seed, args.workers, args.chunk_bytes
        )
    except UserError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{name} {split['images']}" for name, split in info["splits"].items())
    classes = len(info["class_names"])
    print(f"{classes} classes; {sizes} images; train with: data=litdata data.root={args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
