"""A diagnostics CSV on disk: whole epochs appended durably, a fingerprint of what was written, resume."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_warn


class CsvLog:
    """What a callback wrote to its CSV: the absolute path, the byte size and sha256, the stages written.

    An epoch's rows reach the file in one ``write``; a failed write is cut back off, so that the file
    always ends after a whole epoch. The file is synced to disk (``fsync``) when a checkpoint records
    its fingerprint, so that what the checkpoint describes outlives a crash of the machine too. Only
    rank zero writes.
    """

    def __init__(self, path: str, header: Sequence[str], owner: str) -> None:
        self.path, self.header, self.owner = os.path.abspath(path), tuple(header), owner
        self.size, self.sha256 = 0, hashlib.sha256()
        self.written: list[list[Any]] = []  # [epoch, stage] of each stage written, in order

    def append(self, rows: Sequence[Sequence[Any]], stages: Sequence[tuple[int, str]]) -> None:
        """Write one epoch's rows (after the header, into an empty file), or nothing and raise ``OSError``."""
        text = io.StringIO()
        if self.size == 0:
            if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
                rank_zero_warn(f"{self.owner} replaces {self.path!r}, left there by an earlier run.")
            csv.writer(text).writerow(self.header)
        csv.writer(text).writerows(rows)
        data = text.getvalue().encode()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            os.ftruncate(descriptor, self.size)  # what follows our last epoch is not ours (a killed run's)
            os.lseek(descriptor, self.size, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
        except OSError as error:
            with contextlib.suppress(OSError):  # the error below says what happened; the next write cuts too
                os.ftruncate(descriptor, self.size)
            epochs = ", ".join(str(epoch) for epoch in sorted({epoch for epoch, _ in stages}))
            raise OSError(
                error.errno,
                f"{self.owner} could not write epoch {epochs} to {self.path!r} ({error.strerror or error}); "
                "the file ends after the epoch before",
            ) from error
        finally:
            os.close(descriptor)
        self.sha256.update(data)
        self.size += len(data)
        self.written += [[epoch, stage] for epoch, stage in stages]

    def state(self) -> dict[str, Any]:
        """What a checkpoint records: the file, its size and sha256 so far, and the stages written; the file
        is on disk first."""
        if self.size:
            descriptor = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        return {"path": self.path, "size": self.size, "sha256": self.sha256.hexdigest(), "written": self.written}

    def resume(self, state: dict[str, Any]) -> None:
        """Go on from a checkpoint's :meth:`state`: the recorded file's first ``size`` bytes, if their sha256
        is the recorded one, replace this file atomically (which drops rows written after the checkpoint);
        else this file starts afresh, with a warning that names the epochs it lacks."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        kept = _copy_prefix(state["path"], state["size"], state["sha256"], self.path)
        self.sha256, self.size, self.written = kept or hashlib.sha256(), 0, []
        if kept is not None:
            self.size, self.written = int(state["size"]), [[int(epoch), stage] for epoch, stage in state["written"]]
        elif epochs := sorted({int(epoch) for epoch, _ in state["written"]}):
            rank_zero_warn(
                f"{self.owner} resumes a run whose CSV {state['path']!r} is gone or holds other rows than the "
                f"checkpoint recorded (another run's file?): epochs {epochs} are missing from {self.path!r}, "
                "which starts afresh."
            )


def _copy_prefix(source: str, size: int, sha256: str, target: str) -> Any:
    """The hash of the first ``size`` bytes of ``source``, now also in ``target``; None (and ``target``
    untouched) when ``source`` is gone or shorter, or their hash is not ``sha256``."""
    hasher, partial, left = hashlib.sha256(), f"{target}.partial", size
    try:
        with open(source, "rb") as file, open(partial, "wb") as out:
            while left and (chunk := file.read(min(left, 1 << 20))):
                hasher.update(chunk)
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except OSError:
        left = -1
    if left or hasher.hexdigest() != sha256:
        with contextlib.suppress(OSError):
            os.remove(partial)
        return None
    os.replace(partial, target)
    return hasher
