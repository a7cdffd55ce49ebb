"""The packer thread: takes frames off the hand-off queue, encodes and places them.

A frame goes to the in-memory outbox while the server is reachable and memory is
within budget, otherwise to the spill file; with ``record=path`` every frame also
goes to that file. Once a frame is spilled, newer ones follow it to disk until the
sender has read the backlog back.
"""

from __future__ import annotations

from glasscockpit.agent.transport.base import DeliveryState, log, resolve
from glasscockpit.agent.transport.spill import HEADER_SIZE, SpillWriter
from glasscockpit.protocol import encode


class Packer(DeliveryState):
    """Mixin of ``WebSocketTransport``: the spill file and the packer thread."""

    def _open_writer(self) -> bool:
        if self._writer is not None:
            return True
        if self.spill_path is None or self._disk_state == "failed":
            return False
        try:
            existed = self.spill_path.exists()
            self._writer = SpillWriter(self.spill_path)
            self._created_file = not existed
            self._writer.append(self._hello_bytes)
        except OSError as exc:
            self._disk_state = "failed"
            log.warning(
                "glasscockpit: cannot write the spill file %s (%s); frames that "
                "cannot be sent will be dropped",
                self.spill_path,
                exc,
            )
            return False
        self.stats.spill_path = str(self.spill_path)
        return True

    def _disk_write(self, data: bytes) -> int | None:
        """Append one frame to the spill file; its offset, or None if it cannot."""
        if not self._open_writer():
            return None
        assert self._writer is not None
        if self._writer.size + HEADER_SIZE + len(data) > self.options.spill_max_bytes:
            if self._disk_state != "full":
                self._disk_state = "full"
                log.warning(
                    "glasscockpit: the spill file %s reached its budget of %d MiB",
                    self.spill_path,
                    self.options.spill_max_bytes // 2**20,
                )
            return None
        try:
            return self._writer.append(data)
        except OSError as exc:
            self._disk_state = "failed"
            log.warning(
                "glasscockpit: writing the spill file %s failed (%s)",
                self.spill_path,
                exc,
            )
            return None

    def _can_hold_in_memory(self) -> bool:
        o = self.options
        return (
            self._backlog_frames == 0
            and self.stats.state in ("connecting", "live")
            and len(self._outbox) + len(self._unacked) < o.max_memory_frames
            and self._memory_bytes < o.max_memory_bytes
        )

    def _place(self, seq: int, data: bytes) -> None:
        """Put one encoded frame in memory or in the spill backlog (lock held)."""
        self._last_seq = max(self._last_seq, seq)
        offset = None
        if self._record:
            offset = self._disk_write(data)
            if offset is not None:
                self.stats.recorded += 1
        if self.url is None:
            if offset is None:
                self._drop(1, "the recording file cannot be written")
            return
        if self._can_hold_in_memory():
            self._outbox.append((seq, data, offset is not None))
            self._memory_bytes += len(data)
        else:
            if not self._record:
                offset = self._disk_write(data)
            if offset is None:
                self._drop(
                    1,
                    "they can be neither sent nor kept in memory, and the spill "
                    "file is full or cannot be written",
                )
                return
            if self._backlog_frames == 0:
                self._backlog_start = offset
            self._backlog_end = offset + HEADER_SIZE + len(data)
            self._backlog_frames += 1
            self.stats.spilled += 1
        self._update_pending()

    # -- packer thread -----------------------------------------------------------
    def _pack_loop(self) -> None:
        while True:
            if not self._handoff:
                if self._closing or self._stop.is_set():
                    return
                self._handoff_ready.wait(self.options.pack_interval)
                self._handoff_ready.clear()
                continue
            packed: list[tuple[int, bytes]] = []
            while self._handoff and len(packed) < 256:
                item = self._handoff.popleft()
                try:
                    frame = resolve(item)
                    data = encode(frame)
                except Exception as exc:  # noqa: BLE001 - a bad frame must not stop us
                    self._drop(1, f"a frame could not be read or encoded ({exc})")
                    continue
                if len(data) > self.options.max_frame_bytes:
                    limit = self.options.max_frame_bytes
                    self._drop(1, f"a frame is larger than {limit} bytes")
                    continue
                packed.append((frame.seq, data))
            with self._lock:
                for seq, data in packed:
                    if self._stop.is_set():
                        self._drop(1, "close() timed out before it was packed")
                    else:
                        self._place(seq, data)
                self._lock.notify_all()
