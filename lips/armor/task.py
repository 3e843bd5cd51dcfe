"""
The task child of an Execution ARMOR (L{lips.armor.execution}) and the API its task
calls: C{python -m lips.armor.task}, started by the ARMOR's process
(L{lips.armor.process}), never by hand.

It reads its input on standard input, a msgpack map C{{"target": str, "args": bytes}}
(the L{ProcessSpec<lips.supervisor.ProcessSpec>}'s target and msgpack-encoded
arguments, an array), imports the target by name (only importable callables run:
nothing is unpickled or evaluated), calls C{function(*args)} and reports the return
value, which must be a plain value (L{lips.armor.check_value}), to its parent, then
exits 0.  An exception exits non-zero, and so does a return value that is not a plain
value or is too large (L{BAD_RESULT}): the ARMOR's supervisor restarts the task.  The
task's standard output and error are its own (they are its parent's: the ARMOR
process's, lipsd's).

Task code reports to the ARMOR with:

  - L{progress}C{()}: it is alive and getting on (the ARMOR kills a task silent for its
    C{timeout}, a livelock);
  - L{take_checkpoint}C{(state)}: C{state}, bytes, is its checkpoint;
  - L{recover}C{()}: its last checkpoint's state, or None to start afresh (a restarted
    task calls it as it starts).

Called anywhere but in a task child, they raise L{RuntimeError}.

The control channel is a pair of pipes besides the standard ones: the child writes to
its file descriptor L{TO_PARENT} (3) and reads its parent's answers on L{FROM_PARENT}
(4).  Each message is a 4-byte big-endian length and that many bytes of msgpack, an
array whose first element names it:

    child to parent     ["result", value]   ["progress"]
                        ["checkpoint", state]   ["recover"]
    parent to child     ["recovered", state or nil]

A message is at most L{MAX_CONTROL_SIZE} bytes, well within what an ARMOR message's
body may carry, so a result or a checkpoint that fits here fits in the message that
takes it on.  Both sides decode with L{ControlDecoder}, which refuses anything longer,
malformed or unexpected (L{ControlError}).  The child ends itself, with L{ORPHANED},
when its control input reaches its end: its parent, the ARMOR process, is gone, and
its task is restarted elsewhere (two runs of one task must not overlap).
"""

from __future__ import annotations

import importlib
import os
import queue
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack

from lips.armor._messages import MAX_MESSAGE_SIZE, check_value, unpack
from lips.armor._names import MessageError
from lips.supervisor import check_target, load_target

__all__ = [
    "BAD_CONTROL",
    "BAD_RESULT",
    "FROM_HOST",
    "FROM_PARENT",
    "FROM_TASK",
    "MAX_CONTROL_SIZE",
    "MAX_INPUT_SIZE",
    "ORPHANED",
    "TO_PARENT",
    "USAGE",
    "ControlDecoder",
    "ControlError",
    "encode_control",
    "load",
    "main",
    "progress",
    "read_input",
    "recover",
    "take_checkpoint",
    "task_input",
]

#: The child's file descriptor to its parent.
TO_PARENT: Final = 3
#: The child's file descriptor from its parent.
FROM_PARENT: Final = 4
#: The longest control message, in bytes (its length prefix not counted).
MAX_CONTROL_SIZE: Final = 1024 * 1024
#: The longest standard input accepted (an install's arguments fit in one message).
MAX_INPUT_SIZE: Final = MAX_MESSAGE_SIZE

#: Exit status: not started as a task child, or its input is malformed.
USAGE: Final = 2
#: Exit status: the task returned something that is not a plain value, or too large.
BAD_RESULT: Final = 3
#: Exit status: its parent is gone.
ORPHANED: Final = 75
#: Exit status: its parent sent something malformed.
BAD_CONTROL: Final = 76

#: What each side may send: message name -> the types of its arguments (None: any
#: plain value).
FROM_TASK: Final[dict[str, tuple[Any, ...]]] = {
    "result": (None,),
    "progress": (),
    "checkpoint": (bytes,),
    "recover": (),
}
FROM_HOST: Final[dict[str, tuple[Any, ...]]] = {"recovered": ((bytes, type(None)),)}

_HEADER: Final = struct.Struct(">I")


class ControlError(ValueError):
    """A control message that is malformed, unexpected or too long."""


def encode_control(*message: object) -> bytes:
    """
    The length-prefixed encoding of C{message} (its name, then its arguments).

    @raise ControlError: if it is not a plain value, or longer than L{MAX_CONTROL_SIZE}.
    """
    try:
        check_value(message)
    except MessageError as e:
        raise ControlError(str(e)) from None
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_CONTROL_SIZE:
        raise ControlError(f"a control message of {len(body)} bytes is over {MAX_CONTROL_SIZE}")
    return _HEADER.pack(len(body)) + body


def _check(message: object, expected: dict[str, tuple[Any, ...]]) -> tuple[Any, ...]:
    if type(message) is not tuple or not message or type(message[0]) is not str:
        raise ControlError("a control message is an array that starts with its name")
    name, args = message[0], message[1:]
    kinds = expected.get(name)
    if kinds is None:
        raise ControlError(f"unexpected control message {name[:40]!r}")
    if len(args) != len(kinds):
        raise ControlError(f"{name} takes {len(kinds)} arguments, not {len(args)}")
    for arg, kind in zip(args, kinds, strict=True):
        if kind is not None and not isinstance(arg, kind):
            raise ControlError(f"a bad argument to {name}: {type(arg).__name__}")
    try:
        check_value(args)
    except MessageError as e:
        raise ControlError(str(e)) from None
    return message


class ControlDecoder:
    """
    Decodes a stream of control messages, incrementally, holding at most one message's
    bytes.  Once it has refused something it refuses everything after it.

    @param expected: the messages it accepts (L{FROM_TASK} or L{FROM_HOST}).
    """

    def __init__(self, expected: dict[str, tuple[Any, ...]]) -> None:
        self._expected = expected
        self._buffer = bytearray()
        self._failed: ControlError | None = None

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        """
        The messages C{data} completes, in order (arrays as tuples).

        @raise ControlError: at the first malformed, unexpected or too long message.
        """
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        found = []
        try:
            while len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if size > MAX_CONTROL_SIZE:
                    raise ControlError(
                        f"a control message of {size} bytes is over {MAX_CONTROL_SIZE}"
                    )
                end = _HEADER.size + size
                if len(self._buffer) < end:
                    break
                body = bytes(self._buffer[_HEADER.size : end])
                del self._buffer[:end]
                found.append(_check(_unpack(body), self._expected))
        except ControlError as e:
            self._failed = e
            self._buffer.clear()
            raise
        return found


def _unpack(data: bytes) -> Any:
    try:
        return unpack(data, "a control message")
    except MessageError as e:
        raise ControlError(str(e)) from None


# -- the child's input ------------------------------------------------------------------------


def task_input(target: str, args: bytes) -> bytes:
    """What a task child reads on standard input: C{target} and its encoded C{args}."""
    data: bytes = msgpack.packb({"target": target, "args": args}, use_bin_type=True)
    return data


def read_input(data: bytes) -> tuple[str, tuple[Any, ...]]:
    """
    The target and the decoded arguments, from standard input's bytes.

    @raise ValueError: if they are malformed.
    """
    if len(data) > MAX_INPUT_SIZE:
        raise ValueError(f"standard input is over {MAX_INPUT_SIZE} bytes")
    try:
        given = _unpack(data)
    except ControlError:
        raise ValueError("standard input is not msgpack") from None
    if type(given) is not dict or set(given) != {"target", "args"}:
        raise ValueError("standard input is a msgpack map of target and args")
    target, encoded = given["target"], given["args"]
    if type(encoded) is not bytes:
        raise ValueError("args is the msgpack encoding of an array (bytes)")
    try:
        args = _unpack(encoded)
        check_value(args)
    except (ControlError, MessageError) as e:
        raise ValueError(f"args: {e}") from None
    if type(args) is not tuple:
        raise ValueError(f"args is an array, not {type(args).__name__}")
    return check_target(target), args


def load(target: str) -> Callable[..., Any]:
    """The callable named C{target} (L{lips.supervisor.load_target})."""
    return load_target(target)


# -- the channel, in the child ----------------------------------------------------------------


class _Channel:
    """The child's end of the control channel."""

    def __init__(self, out: int, into: int) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._recovering = threading.Lock()
        self._answers: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(into,), name="lips-task-control", daemon=True
        )
        self._reader.start()

    def send(self, *message: object) -> None:
        data = memoryview(encode_control(*message))
        with self._lock:
            try:
                while data:
                    data = data[os.write(self._out, data) :]
            except OSError:  # the parent is gone
                os._exit(ORPHANED)

    def recover(self, timeout: float | None) -> bytes | None:
        with self._recovering:
            self.send("recover")
            try:
                return self._answers.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no answer to recover() in {timeout} s") from None

    def _read(self, into: int) -> None:
        decoder = ControlDecoder(FROM_HOST)
        while True:
            try:
                data = os.read(into, 65536)
            except OSError:
                data = b""
            if not data:
                os._exit(ORPHANED)
            try:
                messages = decoder.feed(data)
            except ControlError as e:
                print(f"lips.armor.task: from the ARMOR: {e}", file=sys.stderr, flush=True)
                os._exit(BAD_CONTROL)
            for _, state in messages:
                self._answers.put(state)


_channel: _Channel | None = None


def _open() -> _Channel:
    if _channel is None:
        raise RuntimeError(
            "not in a task child: progress, take_checkpoint and recover work only in a"
            " task an Execution ARMOR runs"
        )
    return _channel


def progress() -> None:
    """
    Signal that the task is alive and getting on.

    @raise RuntimeError: outside a task child.
    """
    _open().send("progress")


def take_checkpoint(state: bytes) -> None:
    """
    Take a checkpoint: C{state}, the task's own bytes, is what L{recover} gives back to
    it if it is restarted.

    @raise TypeError: if C{state} is not bytes.
    @raise ValueError: (L{ControlError}) if it is too large.
    @raise RuntimeError: outside a task child.
    """
    channel = _open()
    if type(state) is not bytes:
        raise TypeError(f"a checkpoint's state is bytes, not {type(state).__name__}")
    channel.send("checkpoint", state)


def recover(timeout: float | None = None) -> bytes | None:
    """
    The state of the task's last checkpoint, or None if it has none (start afresh).
    Blocks until the ARMOR answers.

    @raise TimeoutError: if C{timeout} seconds pass with no answer.
    @raise RuntimeError: outside a task child.
    """
    return _open().recover(timeout)


def _fail(status: int, why: str) -> int:
    print(f"lips.armor.task: {why}", file=sys.stderr, flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the task standard input names; the exit status."""
    global _channel
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv:
        return _fail(USAGE, "usage: python -m lips.armor.task (started by an Execution ARMOR)")
    for fd in (TO_PARENT, FROM_PARENT):
        try:
            os.fstat(fd)
        except OSError:
            return _fail(USAGE, f"file descriptor {fd} is not open: not started by an ARMOR")
        os.set_inheritable(fd, False)  # the task's own children don't hold the channel
    try:
        target, args = read_input(sys.stdin.buffer.read(MAX_INPUT_SIZE + 1))
    except ValueError as e:
        return _fail(USAGE, str(e))
    _channel = _Channel(TO_PARENT, FROM_PARENT)
    function = load(target)
    result = function(*args)
    try:
        _channel.send("result", result)
    except ControlError as e:
        return _fail(BAD_RESULT, f"{target} returned {type(result).__name__}: {e}")
    return 0


if __name__ == "__main__":
    # Run as lips.armor.task, not as __main__: the task imports that module, and its
    # calls must find the channel opened there.
    sys.exit(importlib.import_module("lips.armor.task").main())
