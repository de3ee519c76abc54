"""What reaches the console: log lines that do not glue onto progress bars, without Lightning's adverts,
and progress lines for long loops (scanning and decoding image folders).

Hydra's logging config (conf/hydra/default.yaml) names these classes, so this module imports
nothing heavy: it is loaded before the config is composed.
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm


class ProgressAwareHandler(logging.StreamHandler):
    """A StreamHandler that clears the progress bars on the terminal before it writes and redraws
    them after, as `tqdm.write` does; otherwise a log line lands on the end of a bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            with tqdm.external_write_mode(file=self.stream):
                self.stream.write(message + self.terminator)
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class DropAdverts(logging.Filter):
    """Drops Lightning's "Tip: try installing litlogger / litmodels" lines: product adverts, not
    advice about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("lightning") and "💡 Tip:" in record.getMessage())


class ProgressLog:
    """Whole log lines about a long loop, for a person waiting on it: `done of total` every `every`
    seconds (none for a loop that ends sooner), and one line at the end if there was any. Log lines,
    not a bar: they read the same on a terminal and in a log file or a pipe.

    Use: `progress = ProgressLog(log, "checked", "image files in /data/train", 50_000)`, then
    `progress.advance(n)` as items are done and `progress.finish()`.
    """

    def __init__(self, logger: logging.Logger, verb: str, what: str, total: int, every: float = 5.0) -> None:
        self.logger, self.verb, self.what, self.total, self.every = logger, verb, what, total, every
        self.done = 0
        self.started = self.last_line = time.perf_counter()
        self.lines = 0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last_line >= self.every and self.done < self.total:
            self.last_line, self.lines = now, self.lines + 1
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            self.logger.info(
                "%s %s of %s %s (%s/s, about %.0f s left)",
                self.verb,
                f"{self.done:,}",
                f"{self.total:,}",
                self.what,
                f"{rate:,.0f}",
                left,
            )

    def finish(self) -> None:
        if self.lines:
            seconds = time.perf_counter() - self.started
            self.logger.info("%s %s %s in %.1f s", self.verb, f"{self.done:,}", self.what, seconds)
