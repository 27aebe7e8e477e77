#!/usr/bin/env python3
"""Reference TensorBoard event files for trainer/src/train/tensorboard.rs, written by tensorboard's own writer.

    python scripts/make_tensorboard_fixtures.py     # needs tensorboard (scripts/requirements.txt)

Writes tests/fixtures/tensorboard/:
- two events files, as `tensorboard.summary.writer.event_file_writer.EventFileWriter` writes them for fixed
  scalars, steps and wall times (its clock and host name are pinned so the bytes are reproducible): a first run
  logging steps 0-5, and a resumed run that starts with `SessionLog.START` at step 4 and logs steps 4-6. The
  writer names files `events.out.tfevents.<time>.<host>.<pid>.<uid>`; they are renamed to TensorFlow's
  `events.out.tfevents.<time>.<host>`, the form lapidary writes.
- events.json: what each file was given (the Rust test gives our writer the same), and what
  `event_accumulator.EventAccumulator` reads from the directory: per tag, (wall_time, step, value), after
  the session start dropped the first run's steps >= 4.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorboard
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import event_file_writer

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tensorboard"
HOST = "host"

RUNS = [
    {
        "file_version_wall_time": 1700000000.25,
        "events": [
            # step 0: proto3 leaves a zero step out; 0.0 values are still written (simple_value is in a oneof)
            {"wall_time": 1700000001.5, "step": 0, "tag": "eval/loss", "value": 3.25},
            *[
                {"wall_time": 1700000001.5 + s, "step": s, "tag": t, "value": v}
                for s in range(1, 6)
                for t, v in [("train/loss", 3.0 / s), ("train/learning_rate", 2e-4 * s), ("train/grad_norm", 0.0)]
            ],
            {"wall_time": 1700000007.75, "step": 4, "tag": "eval/loss", "value": -1.5e-7},
        ],
    },
    {
        "file_version_wall_time": 1700000100.5,
        "events": [
            {"wall_time": 1700000100.75, "step": 4, "start": True},
            {"wall_time": 1700000100.75, "step": 4, "tag": "train/loss", "value": 0.75},
            {"wall_time": 1700000101.0, "step": 4, "tag": "eval/loss", "value": 0.5},
            {"wall_time": 1700000102.0, "step": 5, "tag": "train/loss", "value": 0.6},
            {"wall_time": 1700000103.0, "step": 300000000000, "tag": "train/loss", "value": 1e30},
        ],
    },
]


def event(e):
    if e.get("start"):
        return event_pb2.Event(
            wall_time=e["wall_time"], step=e["step"], session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        )
    value = summary_pb2.Summary.Value(tag=e["tag"], simple_value=e["value"])
    return event_pb2.Event(wall_time=e["wall_time"], step=e["step"], summary=summary_pb2.Summary(value=[value]))


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    event_file_writer.socket.gethostname = lambda: HOST
    files = []
    for run in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            event_file_writer.time.time = lambda: run["file_version_wall_time"]
            w = event_file_writer.EventFileWriter(tmp)
            for e in run["events"]:
                w.add_event(event(e))
            w.close()
            (written,) = os.listdir(tmp)
            name = "events.out.tfevents.%010d.%s" % (run["file_version_wall_time"], HOST)
            assert written.startswith(name + "."), written
            shutil.copy(os.path.join(tmp, written), OUT / name)
        files.append(
            {
                "name": name,
                "file_version_wall_time": run["file_version_wall_time"],
                "events": [
                    {
                        "wall_time": e["wall_time"],
                        "step": e["step"],
                        "tag": e.get("tag"),
                        "value": e.get("value"),
                        "start": bool(e.get("start")),
                    }
                    for e in run["events"]
                ],
            }
        )
    acc = event_accumulator.EventAccumulator(str(OUT), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    read = {tag: [[s.wall_time, s.step, s.value] for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    doc = {
        "tensorboard": tensorboard.__version__,
        "hostname": HOST,
        "writer": "tensorboard.summary.writer.event_file_writer",
        "files": files,
        "accumulator": read,
    }
    (OUT / "events.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(files)} event files and events.json to {OUT}")


if __name__ == "__main__":
    main()
