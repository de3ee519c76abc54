"""Knowledge distillation on real images: a small student trained alone and distilled from a teacher,
same data, epochs and seed, for each seed; the teacher's own test top-1 beside them.

    python benchmarks/distillation.py --data /tmp/cifar10-jpg --teacher RUN/checkpoints/best.ckpt \
        [--student model.width=8 ...] [--epochs 5] [--seeds 1 2] [--kind soft] [--out bench-results]

Without --teacher, the teacher is trained first with --teacher-overrides (default: scratch_cnn at its
default width 16, 10 epochs). Every run is `python train.py data=imagefolder data.root=DIR ...` as
typed, in OUT/distillation/<name>/; the students run with `distill=KIND distill.teacher=CKPT` or without it.
Prints a markdown table and writes OUT/distillation.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(name: str, overrides: list[str], out: Path) -> dict:
    """train.py as typed in its own run dir (kept: it holds the checkpoint and reports); its
    metrics.json and the command's seconds. A run dir that already has metrics.json is read, not rerun."""
    run_dir = out / name
    metrics_file = run_dir / "metrics.json"
    command = [sys.executable, "train.py", *overrides, "logger=none", f"hydra.run.dir={run_dir}"]
    print("$", " ".join(command[1:]), flush=True)
    if not metrics_file.is_file():
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    seconds = float((run_dir / "seconds.txt").read_text()) if (run_dir / "seconds.txt").is_file() else None
    return {"run_dir": str(run_dir), "seconds": seconds, **json.loads(metrics_file.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpg"))
    parser.add_argument("--teacher", type=Path, help="a train.py checkpoint; default: train one first")
    parser.add_argument("--teacher-overrides", nargs="*", default=["trainer.max_epochs=10"])
    parser.add_argument("--student", nargs="*", default=["model.width=8"], help="the student's overrides")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kind", default="soft", choices=["soft", "hard", "feature"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    out = (args.out / "distillation").resolve()
    data = ["data=imagefolder", f"data.root={args.data}", f"data.batch_size={args.batch_size}"]
    teacher = args.teacher
    if teacher is None:
        trained = train("teacher", [*data, *args.teacher_overrides], out)
        teacher = Path(trained["run_dir"]) / "checkpoints" / "best.ckpt"
    student = [*data, *args.student, f"trainer.max_epochs={args.epochs}"]
    rows = []
    for seed in args.seeds:
        alone = train(f"alone_seed{seed}", [*student, f"seed={seed}"], out)
        distilled = train(
            f"{args.kind}_seed{seed}",
            [*student, f"seed={seed}", f"distill={args.kind}", f"distill.teacher={teacher.resolve()}"],
            out,
        )
        rows.append({"seed": seed, "alone": alone, "distilled": distilled})
        print(
            f"seed {seed}: alone {alone['test/top1']:.4f}, distilled {distilled['test/top1']:.4f}", flush=True
        )
    (out.parent / "distillation.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(
        f"\nstudent: {' '.join(args.student)}, {args.epochs} epochs; teacher: {teacher}; distill={args.kind}"
    )
    print(f"| seed | student alone top-1 | distill={args.kind} top-1 | teacher top-1 | agreement | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        alone, distilled = row["alone"], row["distilled"]
        print(
            f"| {row['seed']} | {alone['test/top1']:.4f} | {distilled['test/top1']:.4f}"
            f" | {distilled.get('test/teacher_top1', float('nan')):.4f}"
            f" | {distilled.get('test/agreement', float('nan')):.4f}"
            f" | {alone['seconds'] or 0:.0f} / {distilled['seconds'] or 0:.0f} |"
        )


if __name__ == "__main__":
    main()
