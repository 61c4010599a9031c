"""The Pipes message reader the training and scoring subprocesses report through.

Dagster's file reader (``PipesTempFileMessageReader``) tails the messages file with
``readline()`` and parses whatever it returns. On Linux a reader can see a write to a regular
file half done, so ``readline()`` at the end of the file sometimes returns part of a line; the
reader thread then dies on ``JSONDecodeError`` and every later message of the run is lost,
the materialisation included. Seen twice in one ``make reproduce`` (100-step gemma runs, two
messages per step). This reader only parses complete lines: a partial one waits for its
newline.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
from dagster_pipes import PipesDefaultMessageWriter

POLL_S = 0.01


def tail_whole_lines(path: str, should_stop: Callable[[], bool]) -> Iterator[str]:
    """Complete lines of a file that another process appends to, until ``should_stop()`` and
    nothing is left; a final line without its newline is yielded last."""
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
            elif should_stop():
                if pending.strip():
                    yield pending
                return
            else:
                time.sleep(POLL_S)


class WholeLineMessageReader(dg.PipesMessageReader):
    """A temporary messages file, read one complete line at a time (see the module docstring)."""

    @contextmanager
    def read_messages(self, handler) -> Iterator[dict]:
        done = threading.Event()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "messages")
            open(path, "w", encoding="utf-8").close()
            thread = threading.Thread(target=self._read, args=(path, handler, done), daemon=True)
            thread.start()
            try:
                yield {
                    PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                    PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False,
                }
            finally:
                done.set()
                thread.join()

    @staticmethod
    def _read(path: str, handler, done: threading.Event) -> None:
        try:
            for line in tail_whole_lines(path, done.is_set):
                handler.handle_message(json.loads(line))
        except Exception:
            handler.report_pipes_framework_exception("WholeLineMessageReader", sys.exc_info())
            raise

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file, one line at a time."


def subprocess_client() -> dg.PipesSubprocessClient:
    """The ``pipes_subprocess_client`` resource: Dagster's subprocess client with the
    whole-line reader."""
    return dg.PipesSubprocessClient(message_reader=WholeLineMessageReader())
