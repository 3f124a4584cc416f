"""The TensorBoard output: the C checksums give TensorBoard's bytes, and files that its reader verifies."""

from __future__ import annotations

import glob
import io
import os
import random
from pathlib import Path

import pytest
from callback_helpers import TABLE_LOGITS, TABLE_TARGET, TableData, TableModel, make_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
from tensorboard.summary.writer import record_writer

from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor, _tensorboard
from lossplug.losses import CrossEntropyLoss


@pytest.fixture
def pure_python_crc(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorBoard's own checksum in its writer, as in a process where the callbacks have not logged yet."""
    monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)
    monkeypatch.setattr(_tensorboard, "_c_crc32c_in_use", False)


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


@pytest.mark.usefixtures("pure_python_crc")
def test_a_run_writes_event_files_that_tensorboard_verifies(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    callbacks = [PerClassLossMonitor(verbose=False), HardnessHistogram(plot=False, verbose=False)]
    make_trainer(tmp_path, callbacks, max_epochs=2, logger=logger).fit(
        TableModel(CrossEntropyLoss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET.clamp(min=0))
    )
    assert record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c  # the callbacks' logging put it in place

    tags: set[str] = set()
    for path in glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*")):
        reader = pywrap_tensorflow.PyRecordReader_New(path)  # checks both checksums of every record
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:
                break
            event = Event.FromString(reader.record())
            tags.update(value.tag for value in event.summary.value)
    assert {"hardness/train/all/p_t", "hardness/validate/all/p_t_loss", "hardness/train/all/easy_fraction"} <= tags
    assert any(tag.startswith("per_class/train/share/") for tag in tags)


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
