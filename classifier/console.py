"""What reaches the console: log lines that do not glue onto progress bars, without Lightning's adverts.

Hydra's logging config (conf/hydra/default.yaml) names these classes, so this module imports
nothing heavy: it is loaded before the config is composed.
"""

from __future__ import annotations

import logging

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
