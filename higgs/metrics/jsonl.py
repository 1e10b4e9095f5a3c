"""The JSONL request log (``[logging.metrics]``) with size-based rotation.

Records are queued by the event loop and written by one background thread, so a slow disk never stalls a
request. Rotation keeps ``max_files`` files in all: ``metrics.jsonl`` (current), then ``metrics.jsonl.1``
(newest rotated) up to ``metrics.jsonl.<max_files - 1>``; the oldest is deleted. The standard library's
``RotatingFileHandler`` is not used because with one file (``backupCount=0``) it never bounds the size.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class RotatingJsonlWriter:
    """Append JSON lines to ``path``, rotating when a write would exceed ``max_bytes``.

    Args:
        path: the current log file (parent folders are created).
        max_bytes: size bound of one file.
        max_files: files kept, the current one included (>= 1). With 1 the file is truncated on rotation.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, max_files: int) -> None:
        self.path = Path(path)
        self.max_bytes = max(1, int(max_bytes))
        self.max_files = max(1, int(max_files))
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Set when the file cannot be opened: records are dropped instead of piling up in memory.
        self.failed = False

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    self.failed = True
                    log.warning("metrics log %s: cannot create its folder: %s", self.path, err)
                    return
                self._thread = threading.Thread(target=self._run, name="higgs-metrics-jsonl", daemon=True)
                self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record; never blocks on I/O."""
        if self._thread is None and not self.failed:
            self.start()
        if not self.failed:
            self._queue.put(record)

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        handle = None
        try:
            handle = open(self.path, "ab")  # held for the thread's lifetime
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                line = (json.dumps(item, separators=(",", ":"), default=str) + "\n").encode()
                try:
                    size = handle.tell()
                    if size and size + len(line) > self.max_bytes:
                        handle.close()
                        self._rotate()
                        handle = open(self.path, "ab")  # held for the thread's lifetime
                    handle.write(line)
                    handle.flush()
                except OSError as err:
                    log.warning("metrics log %s: write failed: %s", self.path, err)
        except OSError as err:
            self.failed = True
            log.warning("metrics log %s cannot be opened (request records are not logged): %s", self.path, err)
        finally:
            if handle is not None:
                handle.close()

    def _rotate(self) -> None:
        if self.max_files == 1:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.max_files - 1}")
        oldest.unlink(missing_ok=True)
        for i in range(self.max_files - 2, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
