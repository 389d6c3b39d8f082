"""kombu's filesystem transport, made safe against its write/read race.

Stock kombu (5.7) creates a message file, then locks and writes it; a reader that lists
the folder in between moves the still-empty file away, reads nothing, and the consumer
dies on a JSONDecodeError (the message is lost). This transport writes each message under
a temporary name the readers ignore and renames it into place, and its reader re-reads a
file that another (stock) writer has not finished.

Use: Celery `broker_transport = "producer.fs_transport:Transport"` with a
`filesystem://` broker URL.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

_READ_RETRIES = 50
_READ_WAIT_S = 0.01


class Channel(filesystem.Channel):
    # kombu's own bases disagree on _put's parameter names; this matches filesystem.Channel.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Write to a dot-file (never matched by readers), then rename atomically."""
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = os.path.join(self.data_folder_out, f".tmp-{uuid.uuid4()}")
        try:
            with open(temporary, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as exc:
            raise filesystem.ChannelError(
                f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        """The oldest message of `queue`, read again while a writer is still writing it."""
        wanted = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != wanted:
                continue
            processed = (self.processed_folder if self.store_processed
                         else tempfile.gettempdir())
            try:
                shutil.move(os.path.join(self.data_folder_in, filename), processed)
            except OSError:
                continue  # another consumer took it
            path = os.path.join(processed, filename)
            message = _read_message(path)
            if not self.store_processed:
                os.remove(path)
            if message is not None:
                return message
        raise filesystem.Empty()


def _read_message(path: str) -> Any | None:
    """The decoded message, waiting briefly for a writer that still holds the file open;
    None (logged) for a file that never becomes valid JSON, so the consumer lives on."""
    text = ""
    for _ in range(_READ_RETRIES):
        try:
            with open(path, "rb") as fh:
                text = bytes_to_str(fh.read())
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot read file {path!r} from queue.") from exc
        try:
            return loads(text)
        except ValueError:
            time.sleep(_READ_WAIT_S)
    log.error("dropping message file %s: not valid JSON after %.1f s (%d bytes)", path,
              _READ_RETRIES * _READ_WAIT_S, len(text))
    return None


class Transport(filesystem.Transport):
    Channel = Channel
