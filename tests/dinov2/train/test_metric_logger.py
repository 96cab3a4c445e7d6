import json

import pytest

from dinov2.logging import MetricLogger, SmoothedValue


class Recorder:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_smoothed_value_statistics():
    meter = SmoothedValue(window_size=3)
    for value in [1.0, 5.0, 2.0, 10.0]:
        meter.update(value)
    assert meter.median == 5.0 and meter.value == 10.0 and meter.max == 10.0
    assert meter.avg == pytest.approx(17 / 3) and meter.global_avg == pytest.approx(4.5)


def test_log_every_writes_json_lines_and_stops_without_fetching_more(tmp_path):
    fetched = []

    def stream():
        i = 0
        while True:
            fetched.append(i)
            yield i
            i += 1

    writer = Recorder()
    metric_logger = MetricLogger(output_file=tmp_path / "m.json", tensorboard_writer=writer)
    seen = []
    for item in metric_logger.log_every(stream(), 2, "T", n_iterations=7, start_iteration=2):
        seen.append(item)
        metric_logger.update(loss=float(item))
    assert seen == [0, 1, 2, 3, 4] and fetched == [0, 1, 2, 3, 4]
    records = [json.loads(line) for line in (tmp_path / "m.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4, 6]
    assert records[-1]["last"]["loss"] == 4.0 and records[-1]["loss"] == 2.0  # median of the window
    assert {"iter_time", "data_time", "it_per_s"} <= set(records[0])
    assert ("loss", 2.0, 6) in writer.scalars


def test_a_resumed_log_replaces_the_lines_from_its_start_and_a_torn_line(tmp_path):
    output_file = tmp_path / "m.json"
    # a run killed while writing iteration 5's line, after its checkpoint at iteration 2
    lines = [json.dumps({"iteration": i, "loss": float(i)}) for i in range(5)] + ['{"iteration": 5, "lo']
    output_file.write_text("\n".join(lines))
    metric_logger = MetricLogger(output_file=output_file)
    for item in metric_logger.log_every(iter([10.0, 11.0, 12.0]), 1, "T", n_iterations=6, start_iteration=3):
        metric_logger.update(loss=item)
    records = [json.loads(line) for line in output_file.read_text().splitlines()]
    assert [record["iteration"] for record in records] == [0, 1, 2, 3, 4, 5]
    assert [record["loss"] for record in records[:3]] == [0.0, 1.0, 2.0]
    assert [record["last"]["loss"] for record in records[3:]] == [10.0, 11.0, 12.0]
