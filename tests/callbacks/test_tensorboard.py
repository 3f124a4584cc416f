"""The TensorBoard output: one event per step from both callbacks, and C checksums that give TensorBoard's bytes."""

from __future__ import annotations

import glob
import io
import os
import random
from pathlib import Path
from typing import Any

import pytest
from callback_helpers import TABLE_LOGITS, TABLE_TARGET, TableData, TableModel, make_trainer, read_csv
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
from tensorboard.summary.writer import record_writer

from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor, _tensorboard
from lossplug.losses import CrossEntropyLoss


@pytest.fixture
def pure_python_crc(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorBoard's own checksum in its writer, as in a process where the callbacks have not logged yet."""
    monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)
    monkeypatch.setattr(_tensorboard, "_c_crc32c_in_use", None)


def records(data: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    writer = record_writer.RecordWriter(buffer)
    for item in data:
        writer.write(item)
    return buffer.getvalue()


@pytest.mark.usefixtures("pure_python_crc")
def test_c_checksums_write_the_same_bytes() -> None:
    generator = random.Random(0)
    data = [bytes(generator.randrange(256) for _ in range(size)) for size in (0, 1, 3, 4, 8, 12, 255, 1143, 70_000)]
    data.append(b"\xff" * 4096)
    expected = records(data)
    assert record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c

    assert _tensorboard.use_c_crc32c()
    assert record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c
    for item in data:
        assert record_writer.masked_crc32c(item) == pywrap_tensorflow.masked_crc32c(item)
    assert records(data) == expected
    assert _tensorboard.use_c_crc32c()  # once is enough: the second call changes nothing
    assert records(data) == expected


@pytest.mark.usefixtures("pure_python_crc")
def test_another_replacement_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def theirs(data: bytes) -> int:
        return pywrap_tensorflow.masked_crc32c(data)

    monkeypatch.setattr(record_writer, "masked_crc32c", theirs)
    assert not _tensorboard.use_c_crc32c()
    assert record_writer.masked_crc32c is theirs


def diagnostics_events(log_dir: str) -> list[tuple[int, set[str]]]:
    """(step, tags) of each event that holds the diagnostics' values, read with TensorBoard's checksum checks."""
    events = []
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        reader = pywrap_tensorflow.PyRecordReader_New(path)  # checks both checksums of every record
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:
                break
            event = Event.FromString(reader.record())
            tags = {value.tag for value in event.summary.value}
            if any(tag.startswith(("per_class/", "hardness/")) for tag in tags):
                events.append((event.step, tags))
    return events


def fit_with_tensorboard(tmp_path: Path, callbacks: list[Any], max_epochs: int = 2) -> TensorBoardLogger:
    logger = TensorBoardLogger(tmp_path)
    make_trainer(tmp_path, callbacks, max_epochs=max_epochs, logger=[CSVLogger(tmp_path), logger]).fit(
        TableModel(CrossEntropyLoss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET.clamp(min=0))
    )
    return logger


@pytest.mark.usefixtures("pure_python_crc")
def test_a_run_writes_event_files_that_tensorboard_verifies(tmp_path: Path) -> None:
    logger = fit_with_tensorboard(tmp_path, [PerClassLossMonitor(verbose=False), HardnessHistogram(plot=False, verbose=False)])
    assert record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c  # the callbacks' logging put it in place
    tags = set().union(*(tags for _, tags in diagnostics_events(logger.log_dir)))
    assert {"hardness/train/all/p_t", "hardness/validate/all/p_t_loss", "hardness/train/all/easy_fraction"} <= tags
    assert any(tag.startswith("per_class/train/share/") for tag in tags)


@pytest.mark.parametrize("hardness_first", [False, True])
def test_one_event_per_epoch_holds_both_callbacks_values(tmp_path: Path, hardness_first: bool) -> None:
    callbacks: list[Any] = [PerClassLossMonitor(verbose=False), HardnessHistogram(plot=False, verbose=False)]
    if hardness_first:
        callbacks.reverse()
    logger = fit_with_tensorboard(tmp_path, callbacks, max_epochs=3)
    events = diagnostics_events(logger.log_dir)
    assert [step for step, _ in events] == [2, 4, 6]  # two training steps per epoch
    for _, tags in events:
        for stage in ("train", "validate"):
            assert f"hardness/{stage}/all/p_t" in tags
            assert f"hardness/{stage}/all/hard_fraction" in tags
            assert f"per_class/{stage}/share/0" in tags
    # the other loggers get every scalar, as before
    metrics = read_csv(os.path.join(callbacks[0].log_dir, "metrics.csv"))
    assert {"per_class/train/share/0", "hardness/validate/all/easy_fraction"} <= set(metrics[0])


def test_values_handed_on_are_sent_when_the_last_callback_logs_no_scalars(tmp_path: Path) -> None:
    callbacks = [PerClassLossMonitor(verbose=False), HardnessHistogram(plot=False, verbose=False, log_scalars=False)]
    logger = fit_with_tensorboard(tmp_path, callbacks)
    events = diagnostics_events(logger.log_dir)
    assert [step for step, _ in events] == [2, 4]
    for _, tags in events:
        assert "per_class/train/share/0" in tags
        assert not any(tag.startswith("hardness/") for tag in tags)


def test_one_callback_alone_sends_its_own_event(tmp_path: Path) -> None:
    logger = fit_with_tensorboard(tmp_path, [HardnessHistogram(plot=False, verbose=False, stages=["train"])])
    events = diagnostics_events(logger.log_dir)
    assert [step for step, _ in events] == [2, 4]
    assert all("hardness/train/all/p_t_loss" in tags and "hardness/validate/all/p_t" not in tags for _, tags in events)


@pytest.mark.usefixtures("pure_python_crc")
def test_a_wrong_checksum_is_caught_by_the_reader(tmp_path: Path) -> None:
    """The check above can fail: a record whose checksum is off by one is rejected."""
    _tensorboard.use_c_crc32c()
    path = tmp_path / "events.out.tfevents.0"
    data = Event(step=3).SerializeToString()
    framed = bytearray(records([data]))
    framed[-1] ^= 1
    path.write_bytes(bytes(framed))
    reader = pywrap_tensorflow.PyRecordReader_New(str(path))
    with pytest.raises(errors.DataLossError, match="crc32"):
        reader.GetNext()


class Interrupt(Callback):
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        raise RuntimeError("stopped between the two diagnostics callbacks")


def test_values_handed_on_are_sent_when_the_run_fails_before_the_last_callback(tmp_path: Path) -> None:
    callbacks = [PerClassLossMonitor(verbose=False), Interrupt(), HardnessHistogram(plot=False, verbose=False)]
    logger = TensorBoardLogger(tmp_path)
    trainer = make_trainer(tmp_path, callbacks, logger=logger)
    with pytest.raises(RuntimeError, match="stopped between"):
        trainer.fit(TableModel(CrossEntropyLoss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET.clamp(min=0)))
    ((_, tags),) = diagnostics_events(logger.log_dir)
    assert {"per_class/train/share/0", "per_class/validate/share/0"} <= tags
