"""
The ARMOR zygote: C{python -m lips.armor.zygote}, started by lipsd (its
L{ZygoteSpawner<lips.node.ZygoteSpawner>}), never by hand.  It imports what an ARMOR
process runs (L{lips.armor.process}, the ARMOR types, the task host) once, then forks
one ARMOR process per request: the child starts with all of that already in memory,
so an install costs a fork, not an interpreter's start and its imports (about half a
second on a busy two-core machine).

It is single-threaded and never runs a reactor, so a fork copies no thread, lock or
event loop: each child makes the reactor it runs on after the fork.  The child gets
the environment and the standard-input bytes of the request (those
L{lips.armor.process.environment} and L{lips.armor.process.stdin_input} give a spawned
process), standard input from C{/dev/null}, and the zygote's standard error as both
standard output and error.  It is the same program as a spawned ARMOR process from
there on (L{lips.armor.process.run}).

Its protocol with lipsd, on its standard input and output: frames of a 4-byte
big-endian length and a msgpack array, at most L{MAX_REQUEST} bytes.

  - lipsd to it: C{["fork", handle, env, stdin]}: C{env} a map of strings, C{stdin}
    bytes.
  - it to lipsd: C{["forked", handle, pid]}; C{["failed", handle, why]} (the fork
    itself failed); C{["ended", handle, code, signal]} when a child it forked ended
    (one of C{code}, C{signal} is nil).

A malformed request ends the zygote with status L{BAD_REQUEST}: lipsd starts another.
At end-of-file on its standard input (lipsd is gone) it exits; its children end on
their own when their links to the daemon close.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import selectors
import signal
import struct
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgpack

__all__ = ["BAD_REQUEST", "MAX_REQUEST", "FrameBuffer", "decode_frames", "encode_frame", "main"]

#: The largest frame either side sends (an ARMOR's configuration rides in one).
MAX_REQUEST: Final = 8 * 1024 * 1024
#: Exit status: lipsd sent something this zygote does not understand.
BAD_REQUEST: Final = 76
_HEAD: Final = struct.Struct("!I")


def encode_frame(*message: Any) -> bytes:
    """One frame of C{message} (an array)."""
    body: bytes = msgpack.packb(list(message), use_bin_type=True)
    if len(body) > MAX_REQUEST:
        raise ValueError(f"a zygote frame of {len(body)} bytes is over {MAX_REQUEST}")
    return _HEAD.pack(len(body)) + body


class FrameBuffer:
    """The frames of a byte stream, fed in pieces; at most one frame is held."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> Iterator[list[Any]]:
        """
        The complete frames in what came so far.

        @raise ValueError: if a frame is over L{MAX_REQUEST} or not a msgpack array.
        """
        self._data += data
        while len(self._data) >= _HEAD.size:
            (size,) = _HEAD.unpack_from(self._data)
            if size > MAX_REQUEST:
                raise ValueError(f"a zygote frame of {size} bytes is over {MAX_REQUEST}")
            if len(self._data) < _HEAD.size + size:
                return
            body = bytes(self._data[_HEAD.size : _HEAD.size + size])
            del self._data[: _HEAD.size + size]
            try:
                value = msgpack.unpackb(body, raw=False, strict_map_key=True, max_ext_len=0)
            except Exception as e:
                raise ValueError(f"a zygote frame is not msgpack: {e}") from None
            if not isinstance(value, list) or not value or not isinstance(value[0], str):
                raise ValueError("a zygote frame is an array whose first element names it")
            yield value


def decode_frames(data: bytes) -> list[list[Any]]:
    """Every frame of C{data}, which holds whole frames only."""
    return list(FrameBuffer().feed(data))


def _request(frame: list[Any]) -> tuple[int, dict[str, str], bytes]:
    if len(frame) != 4 or frame[0] != "fork":
        raise ValueError(f"not a fork request: {frame[:1]!r}")
    _, handle, env, stdin = frame
    if type(handle) is not int or not isinstance(env, dict) or type(stdin) is not bytes:
        raise ValueError("a fork request is [fork, handle, env, stdin]")
    if not all(type(k) is str and type(v) is str for k, v in env.items()):
        raise ValueError("a fork request's environment maps strings to strings")
    return handle, env, stdin


#: The zygote's own process title.
TITLE: Final = "lips-armor-zygote"


def _warm() -> None:
    """Import what ARMOR processes run, so that the forked children need not."""
    import lips.armor.process

    with contextlib.suppress(ImportError):
        import setproctitle

        # Set up here, while the environment is the process's own: a child changes
        # it before it names itself, which setproctitle cannot start from.
        setproctitle.setproctitle(TITLE)
    from lips.armor import ArmorFactory

    factory = ArmorFactory()
    for name in factory.names():
        module = str(getattr(factory.type(name), "target", "")).partition(":")[0]
        with contextlib.suppress(Exception):  # a broken plugin fails its installs, not this
            importlib.import_module(module)
    import lips.armor._tasks  # noqa: F401


def _child(env: Mapping[str, str], stdin: bytes, close: list[int]) -> None:
    """In the forked child: become the ARMOR process of the request.  Never returns."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close:  # the zygote's own: its protocol with lipsd, its wake-up pipe
            with contextlib.suppress(OSError):
                os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(2, 1)
        os.close(null)
        os.environ.clear()
        os.environ.update(env)
        from lips.armor import process

        code = process.run(os.environ, stdin)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> None:
    """Serve fork requests on standard input until it ends."""
    _warm()
    requests = sys.stdin.fileno()
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # what is printed goes to the log, never into the protocol
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    handles: dict[int, int] = {}
    buffer = FrameBuffer()
    selector = selectors.DefaultSelector()
    try:
        selector.register(requests, selectors.EVENT_READ, "requests")
    except (PermissionError, ValueError):
        print("lips.armor.zygote: its standard input must be lipsd's pipe", file=sys.stderr)
        raise SystemExit(BAD_REQUEST) from None
    selector.register(wake_r, selectors.EVENT_READ, "children")

    def reap() -> None:
        while handles:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handle = handles.pop(pid, None)
            if handle is None:
                continue
            if os.WIFSIGNALED(status):
                replies.write(encode_frame("ended", handle, None, os.WTERMSIG(status)))
            else:
                replies.write(
                    encode_frame("ended", handle, os.waitstatus_to_exitcode(status), None)
                )

    while True:
        for key, _ in selector.select():
            if key.data == "children":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                reap()
                continue
            data = os.read(requests, 65536)
            if not data:
                return
            try:
                frames = list(buffer.feed(data))
                asked = [_request(f) for f in frames]
            except ValueError as e:
                print(f"lips.armor.zygote: {e}", file=sys.stderr)
                raise SystemExit(BAD_REQUEST) from None
            for handle, env, stdin in asked:
                try:
                    pid = os.fork()
                except OSError as e:
                    replies.write(encode_frame("failed", handle, str(e)))
                    continue
                if pid == 0:
                    selector.close()
                    _child(env, stdin, [replies.fileno(), wake_r, wake_w])
                handles[pid] = handle
                replies.write(encode_frame("forked", handle, pid))
        reap()


if __name__ == "__main__":
    main()
