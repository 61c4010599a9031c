"""The Pipes message reader parses only complete lines: a line written in two pieces (what a
reader can see of one write on Linux) is one message, never a JSONDecodeError."""

from __future__ import annotations

import json
import threading
import time

from assets.pipes import tail_whole_lines


def test_a_line_written_in_pieces_is_read_whole(tmp_path):
    path = tmp_path / "messages"
    path.write_text("")
    messages = [{"method": "report_custom_message", "params": {"step": i, "loss": 1 / (i + 1)}}
                for i in range(20)]  # fmt: skip
    done = threading.Event()

    def write():
        with open(path, "a", encoding="utf-8") as f:
            for m in messages:
                line = json.dumps(m) + "\n"
                cut = len(line) // 2
                f.write(line[:cut])
                f.flush()
                time.sleep(0.03)  # the reader polls every 10 ms: it sees the half line
                f.write(line[cut:])
                f.flush()
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    lines = list(tail_whole_lines(str(path), done.is_set))
    writer.join()
    assert [json.loads(x) for x in lines] == messages


def test_a_last_line_without_newline_is_still_delivered(tmp_path):
    path = tmp_path / "messages"
    path.write_text('{"a": 1}\n{"b": 2}')
    assert [json.loads(x) for x in tail_whole_lines(str(path), lambda: True)] == [
        {"a": 1}, {"b": 2}]  # fmt: skip
