"""The durable feedback log: validation, idempotent ids, and no acknowledged event lost to
``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.feedback import Event, FeedbackLog

REPO = Path(__file__).resolve().parents[1]

WRITER = """
import sys
from recsys.feedback import Event, FeedbackLog
log = FeedbackLog(sys.argv[1])
n = 0
while True:
    events = [Event("u%d" % (n % 7), "i%d" % j, "impression", 1.7e9 + n, "plain", j + 1,
                    "e%d-%d" % (n, j)) for j in range(5)]
    log.append(events)
    print(n, flush=True)  # acknowledged: append returned
    n += 1
"""


def test_events_are_validated_with_the_field_named():
    ok = Event.parse({"uid": "u", "item": "i", "type": "click", "ts": 1.7e9, "position": 3})
    assert (ok.uid, ok.type, ok.ts, ok.position, ok.variant) == ("u", "click", 1.7e9, 3, None)
    assert Event.parse({"uid": "u", "item": "i", "type": "purchase"}, now=5.0).ts == 5.0
    for raw, message in [
        ({"uid": "", "item": "i", "type": "click"}, "uid must be a non-empty string"),
        ({"uid": "u", "item": "i" * 129, "type": "click"}, "item is 129 characters"),
        ({"uid": "u", "item": "i", "type": "click", "ts": -1}, "ts must be"),
        ({"uid": "u", "item": "i", "type": "click", "ts": float("nan")}, "ts must be"),
        ({"uid": "u", "item": "i", "type": "click", "position": True}, "position must be"),
        ({"uid": "u", "item": "i", "type": "click", "event_id": 7}, "event_id must be"),
        (["not", "an", "object"], "must be a JSON object"),
    ]:
        with pytest.raises(ValueError, match=message):
            Event.parse(raw)


def test_an_event_id_is_stored_once_and_users_events_come_oldest_first(tmp_path):
    log = FeedbackLog(tmp_path / "f.db")
    first = [Event("u", "a", "click", 1.0, event_id="x"), Event("u", "b", "click", 2.0)]
    assert log.append(first, received=10.0) == 2
    assert log.append([Event("u", "a", "click", 1.0, event_id="x")], received=11.0) == 0
    log.append([Event("u", "c", "impression", 3.0), Event("v", "d", "click", 4.0)],
               received=12.0)
    events = log.user_events(["u", "v", "w"], ("click",), since=0.0)
    assert {u: [e["item"] for e in rows] for u, rows in events.items()} == {
        "u": ["a", "b"], "v": ["d"]}
    assert [e["item"] for e in log.user_events(["u"], ("click",), limit=1)["u"]] == ["b"]
    assert log.user_events(["u"], since=10.0) == {"u": [log.user_events(["u"])["u"][2]]}
    assert log.count() == 4 and log.event_ids() == {"x"}


def test_kill_9_loses_no_acknowledged_event_and_corrupts_nothing(tmp_path):
    path = tmp_path / "f.db"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    acked = []
    start = time.monotonic()
    while len(acked) < 50 and time.monotonic() - start < 60:
        acked.append(int(proc.stdout.readline()))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acked += [int(line) for line in proc.stdout.read().split()]
    assert len(acked) >= 50
    log = FeedbackLog(path)
    assert log.integrity() == "ok"
    ids = log.event_ids()
    assert {f"e{n}-{j}" for n in acked for j in range(5)} <= ids
    assert log.append([Event("u", "i", "click", 1.0)]) == 1  # still writable
