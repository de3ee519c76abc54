"""The audit on planted faults in real images: a few thousand CIFAR-10 JPEGs with 5% of the training
labels flipped at random, test images copied into train (leaks) and train images copied twice
(duplicates); audit.py must find them. Prints the precision/recall table and the seconds.

    python benchmarks/audit_planted.py --cifar /tmp/cifar10-jpg --out /tmp/planted \
        --audit model=speedrun_cnn model.weights=BACKBONE.ckpt [--skip 0] [--before-after]

The planted folder (OUT/data: train/<class>/, test/<class>/, and OUT/planted.json, the ground truth)
takes train images [skip, skip + train-per-class) and test images [0, test-per-class) of each class.
Half the leaked test images are byte copies, half re-encoded at JPEG quality 85; of each duplicated
train image one copy is a byte copy and one is mirrored left-right. The audit runs as typed,
`python audit.py data=imagefolder data.root=OUT/data ...`, in OUT/audit. With --before-after,
train.py trains on the planted data with and without data.exclude= the audit's rows under train/
(OUT/issues_train.csv, so the test folder stays whole), for each of --seeds, with the --train
overrides, and prints test top-1 before and after on the same test split.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def plant(
    cifar: Path,
    out: Path,
    train_per_class: int,
    test_per_class: int,
    skip: int,
    seed: int,
    flip_fraction: float,
    leaks: int,
    duplicates: int,
) -> dict:
    """Build OUT/data with the planted faults; returns (and writes OUT/planted.json) the ground truth."""
    rng = random.Random(seed)
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    classes = sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())
    train, test = [], []
    for name in classes:
        for split, chosen, store in (
            ("train", _images(cifar / "train" / name)[skip : skip + train_per_class], train),
            ("test", _images(cifar / "test" / name)[:test_per_class], test),
        ):
            (data / split / name).mkdir(parents=True, exist_ok=True)
            for source in chosen:
                target = data / split / name / source.name
                shutil.copyfile(source, target)
                store.append((target, name))
    flipped = {}
    for path, name in rng.sample(train, round(flip_fraction * len(train))):
        wrong = rng.choice([c for c in classes if c != name])
        target = data / "train" / wrong / f"flipped_{name}_{path.name}"
        path.rename(target)
        flipped[str(target)] = {"true": name, "given": wrong}
    flipped_sources = {Path(p).name.split("_", 2)[2] for p in flipped}
    clean_train = [(p, n) for p, n in train if p.exists() and p.name not in flipped_sources]
    leak_pairs = []
    for number, (path, name) in enumerate(rng.sample(test, leaks)):
        target = data / "train" / name / f"leak_{path.name}"
        if number % 2 == 0:
            shutil.copyfile(path, target)
        else:
            Image.open(path).convert("RGB").save(target, quality=85)
        leak_pairs.append([str(target), str(path)])
    duplicate_pairs = []
    for path, name in rng.sample(clean_train, duplicates):
        copy = data / "train" / name / f"copy_{path.name}"
        shutil.copyfile(path, copy)
        mirrored = data / "train" / name / f"mirrored_{path.stem}.png"
        ImageOps.mirror(Image.open(path).convert("RGB")).save(mirrored)
        duplicate_pairs += [[str(copy), str(path)], [str(mirrored), str(path)]]
    truth = {
        "classes": classes,
        "train_images": sum(1 for _ in (data / "train").rglob("*.*")),
        "test_images": len(test),
        "flipped": flipped,
        "leaks": leak_pairs,
        "duplicates": duplicate_pairs,
    }
    (out / "planted.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def run(command: list[str], log: Path) -> float:
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    with log.open("w") as stream:
        done = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def score(issues_csv: Path, truth: dict) -> dict:
    """Precision and recall of the label rows (the whole list and its top k), and which planted pairs
    were found."""
    rows = list(csv.DictReader(issues_csv.open()))
    labels = [r for r in rows if r["issue"] == "label"]
    flipped = truth["flipped"]
    table = []
    for k in sorted({len(flipped), 2 * len(flipped), len(labels)}):
        top = labels[:k]
        hits = sum(r["path"] in flipped for r in top)
        table.append(
            {
                "list": "all flagged" if k == len(labels) else f"top {k}",
                "flagged": len(top),
                "flipped found": hits,
                "precision": hits / len(top) if top else 0.0,
                "recall": hits / len(flipped),
            }
        )
    suggested_right = sum(
        r["path"] in flipped and r["suggested_label"] == flipped[r["path"]]["true"] for r in labels
    )
    # A planted pair is found when the reported pairs join its two files (a byte copy and a mirrored
    # copy of one image may each be paired with the other copy rather than the original), whatever
    # the kind: which split a copy lands in (val is drawn from train) decides leak or duplicate.
    group = {}

    def root(path: str) -> str:
        while group.get(path, path) != path:
            path = group[path]
        return path

    pair_rows = [r for r in rows if r["issue"] != "label"]
    for r in pair_rows:
        group[root(r["path"])] = root(r["other_path"])
    found = {kind: [root(a) == root(b) for a, b in truth[kind]] for kind in ("leaks", "duplicates")}
    planted_files = {path for kind in ("leaks", "duplicates") for pair in truth[kind] for path in pair}
    return {
        "labels": table,
        "suggested_label_right": suggested_right,
        "leaks_hits": found["leaks"],
        "duplicates_hits": found["duplicates"],
        "leaks_found": sum(found["leaks"]),
        "leaks_planted": len(truth["leaks"]),
        "duplicates_found": sum(found["duplicates"]),
        "duplicates_planted": len(truth["duplicates"]),
        "other_pairs": [r for r in pair_rows if not {r["path"], r["other_path"]} & planted_files],
    }


def train_rows_only(issues_csv: Path, data: Path, out: Path) -> Path:
    """The rows of issues.csv whose `path` is under DATA/train: excluding them leaves the test folder
    whole, so top-1 before and after is measured on the same test images."""
    with issues_csv.open(newline="") as stream:
        reader = csv.DictReader(stream)
        rows = [row for row in reader if Path(row["path"]).is_relative_to(data / "train")]
        columns = reader.fieldnames
    with out.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out


def before_after(args: argparse.Namespace, data: Path, issues_csv: Path) -> dict:
    """train.py on the planted data without and with data.exclude (train's rows), each seed; the test
    split is the same in both."""
    train_issues = train_rows_only(issues_csv, data, args.out / "issues_train.csv")
    found = {}
    print("\n| seed | test top-1 before | test top-1 after data.exclude | train images before / after |")
    print("|---|---|---|---|")
    for seed in args.seeds:
        row = {}
        for name, extra in (("before", []), ("after", [f"data.exclude={train_issues}"])):
            run_dir = args.out / f"train_{name}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            command = [sys.executable, "train.py", "data=imagefolder", f"data.root={data}", f"seed={seed}"]
            command += [*args.train, *extra, "logger=none", f"hydra.run.dir={run_dir}"]
            took = run(command, args.out / f"train_{name}_seed{seed}.out")
            metrics = json.loads((run_dir / "metrics.json").read_text())
            card = (run_dir / "model_card.yaml").read_text()
            train_images = re.search(r"^ +train: (\d+)$", card, re.M)
            row[name] = {
                "test_top1": metrics["test/top1"],
                "train_images": int(train_images.group(1)) if train_images else None,
                "seconds": round(took, 1),
                "run_dir": str(run_dir),
            }
        found[seed] = row
        print(
            f"| {seed} | {row['before']['test_top1']:.4f} | {row['after']['test_top1']:.4f} |"
            f" {row['before']['train_images']} / {row['after']['train_images']} |"
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cifar", type=Path, default=Path("/tmp/cifar10-jpg"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/planted"))
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--skip", type=int, default=0, help="train images of each class passed over first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--leaks", type=int, default=20)
    parser.add_argument("--duplicates", type=int, default=10)
    parser.add_argument(
        "--audit", nargs="*", default=[], help="audit.py overrides (model=..., model.weights=...)"
    )
    parser.add_argument("--before-after", action="store_true")
    parser.add_argument("--train", nargs="*", default=["trainer.max_epochs=20"], help="train.py overrides")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    truth = plant(
        args.cifar,
        args.out,
        args.train_per_class,
        args.test_per_class,
        args.skip,
        args.seed,
        args.flip,
        args.leaks,
        args.duplicates,
    )
    print(
        f"planted: {truth['train_images']} train and {truth['test_images']} test images; "
        f"{len(truth['flipped'])} labels flipped, {len(truth['leaks'])} test images copied into train, "
        f"{len(truth['duplicates']) // 2} train images copied twice",
        flush=True,
    )
    data = args.out / "data"
    audit_dir = args.out / "audit"
    shutil.rmtree(audit_dir, ignore_errors=True)
    seconds = run(
        [
            sys.executable,
            "audit.py",
            "data=imagefolder",
            f"data.root={data}",
            *args.audit,
            f"hydra.run.dir={audit_dir}",
        ],
        args.out / "audit.out",
    )
    result = score(audit_dir / "issues.csv", truth)
    missed = [
        pair
        for kind in ("leaks", "duplicates")
        for pair, hit in zip(truth[kind], result[kind + "_hits"], strict=True)
        if not hit
    ]
    result["audit_seconds"] = round(seconds, 1)
    result["audit_stage_seconds"] = json.loads((audit_dir / "audit.json").read_text())["seconds"]
    print("\n| list | flagged | flipped found | precision | recall |\n|---|---|---|---|---|")
    for row in result["labels"]:
        cells = [
            row["list"],
            row["flagged"],
            row["flipped found"],
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")
    print(f"\nsuggested label = the true label for {result['suggested_label_right']} of the flipped found")
    print(
        f"leaks found: {result['leaks_found']} of {result['leaks_planted']}; "
        f"duplicate pairs found: {result['duplicates_found']} of {result['duplicates_planted']}; "
        f"other pairs reported: {len(result['other_pairs'])}"
    )
    for pair in missed:
        print(f"missed: {pair[0]} <-> {pair[1]}")
    print(f"audit.py: {seconds:.1f} s for the command; stages: {result['audit_stage_seconds']}")
    if args.before_after:
        result["before_after"] = before_after(args, data, audit_dir / "issues.csv")
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
