"""
Tests for the ARMOR zygote (L{lips.armor.zygote}) and lipsd's L{ZygoteSpawner}: its
frames, and real ARMOR processes forked by a real zygote on the reactor: one that
connects to a daemon socket and names itself, its end when terminated, and what
becomes of the processes of a zygote that dies.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lips.armor import ArmorHello, ArmorSpec, Frame, FrameDecoder, armor_id
from lips.armor.zygote import MAX_REQUEST, FrameBuffer, decode_frames, encode_frame
from lips.node import ZygoteSpawner
from lips.supervisor import Exit


class FrameTests(SynchronousTestCase):
    def test_round_trip_in_pieces(self) -> None:
        data = encode_frame("fork", 1, {"A": "b"}, b"\x00\x01") + encode_frame("ended", 1, 0, None)
        buffer = FrameBuffer()
        frames = [f for i in range(len(data)) for f in buffer.feed(data[i : i + 1])]
        self.assertEqual(frames, [["fork", 1, {"A": "b"}, b"\x00\x01"], ["ended", 1, 0, None]])
        self.assertEqual(decode_frames(data), frames)

    def test_refusals(self) -> None:
        with self.assertRaises(ValueError):
            list(FrameBuffer().feed((MAX_REQUEST + 1).to_bytes(4, "big")))
        with self.assertRaises(ValueError):
            list(FrameBuffer().feed((1).to_bytes(4, "big") + b"\xc1"))
        with self.assertRaises(ValueError):
            list(FrameBuffer().feed((1).to_bytes(4, "big") + b"\x01"))  # not an array
        with self.assertRaises(ValueError):
            encode_frame("x", b"\x00" * (MAX_REQUEST + 1))


class Daemonish(Protocol):
    """A daemon socket that records the hello of whoever connects, and says nothing."""

    def __init__(self, hellos: defer.DeferredQueue[ArmorHello]) -> None:
        self.hellos = hellos
        self.decoder = FrameDecoder(1 << 16)

    def dataReceived(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if isinstance(frame, Frame):
                self.hellos.put(ArmorHello.from_frame(frame))


class ZygoteSpawnerTests(TestCase):
    timeout = 60

    async def socket(self) -> tuple[str, defer.DeferredQueue[ArmorHello]]:
        directory = Path(tempfile.mkdtemp(prefix="lips-zygote-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = str(directory / "daemon.sock")
        hellos: defer.DeferredQueue[ArmorHello] = defer.DeferredQueue()
        port = await UNIXServerEndpoint(reactor, path).listen(
            Factory.forProtocol(lambda: Daemonish(hellos))
        )
        self.addCleanup(port.stopListening)
        return path, hellos

    def spawner(self) -> ZygoteSpawner:
        spawner = ZygoteSpawner(reactor)
        self.addCleanup(spawner.stop)
        return spawner

    def spec(self, incarnation: int = 1) -> ArmorSpec:
        return ArmorSpec(
            armor_id("heartbeat.z"), "heartbeat", armor_id("ftm"), incarnation, {}, b"t" * 16
        )

    async def test_a_forked_process_connects_and_ends_when_told(self) -> None:
        path, hellos = await self.socket()
        spawner = self.spawner()
        ended: defer.Deferred[Exit] = defer.Deferred()
        child = spawner.spawn_armor(self.spec(), path, ended.callback)
        hello = await hellos.get()
        self.assertEqual(
            (hello.armor, hello.incarnation, hello.token), ("heartbeat.z", 1, b"t" * 16)
        )
        self.assertIsNotNone(child.os_pid)
        self.assertIsNotNone(spawner._zygote)
        pid = child.os_pid
        child.terminate()
        exit = await ended  # its reactor stops on SIGTERM: it exits
        self.assertEqual(exit.error, None)
        await _gone(pid)
        # The next one is forked by the same zygote.
        zygote = spawner._zygote
        ended2: defer.Deferred[Exit] = defer.Deferred()
        child2 = spawner.spawn_armor(self.spec(2), path, ended2.callback)
        self.assertEqual((await hellos.get()).incarnation, 2)
        self.assertIs(spawner._zygote, zygote)
        child2.kill()
        self.assertEqual((await ended2).signal, signal.SIGKILL)

    async def test_warmed_before_the_first_install(self) -> None:
        """warm() starts the zygote at once; the first install is forked by it."""
        path, _ = await self.socket()
        spawner = self.spawner()
        spawner.warm()
        zygote = spawner._zygote
        self.assertIsNotNone(zygote)
        ended: defer.Deferred[Exit] = defer.Deferred()
        spawner.spawn_armor(self.spec(), path, ended.callback).kill()
        await ended
        self.assertIs(spawner._zygote, zygote)

    async def test_a_process_that_cannot_connect_ends_with_a_status(self) -> None:
        spawner = self.spawner()
        ended: defer.Deferred[Exit] = defer.Deferred()
        spawner.spawn_armor(self.spec(), "/nonexistent/daemon.sock", ended.callback)
        exit = await ended
        self.assertIsNone(exit.signal)
        self.assertNotEqual(exit.code, 0)

    async def test_a_dead_zygotes_processes_are_killed_and_reported(self) -> None:
        path, hellos = await self.socket()
        spawner = self.spawner()
        ended: defer.Deferred[Exit] = defer.Deferred()
        child = spawner.spawn_armor(self.spec(), path, ended.callback)
        await hellos.get()
        zygote = spawner._zygote
        assert zygote is not None and zygote.transport is not None and child.os_pid is not None
        pid = child.os_pid
        zygote.transport.signalProcess("KILL")
        exit = await ended
        self.assertEqual(exit.error, "its zygote ended")
        await _gone(pid)
        # A new zygote serves the next install.
        again: defer.Deferred[Exit] = defer.Deferred()
        spawner.spawn_armor(self.spec(2), path, again.callback).kill()
        await again
        self.assertIsNot(spawner._zygote, zygote)


async def _gone(pid: int) -> None:
    from twisted.internet.task import deferLater

    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _zombie(pid):
            return
        await deferLater(reactor, 0.02)
    raise AssertionError(f"process {pid} still runs")


def _zombie(pid: int) -> bool:
    try:
        status: Any = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True
    return bool(status == "Z")
