"""`python -m classifier.sweeps` before the package was regrouped: it says the command's new name."""

if __name__ == "__main__":
    raise SystemExit("python -m classifier.sweeps is now: python -m classifier.run.sweeps SWEEP_DIR")
