"""
Tests for processes that attach themselves to a daemon (C{twistd lips-ftm}'s FTM,
C{lips submit}'s submitter): the daemon core's L{Daemon.local_attach}, the local link's
attach handshake (a nonce from the daemon, a proof of the cluster key), the attaching
side of L{lips.armor.process.ArmorHost}, and the submitter ARMOR.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lips.armor import (
    NONCE_SIZE,
    TABLE,
    AttachHello,
    Auth,
    Daemon,
    DaemonHello,
    DaemonPolicy,
    DaemonTimer,
    Frame,
    FrameDecoder,
    FrameKind,
    HandshakeError,
    LocalPeer,
    Message,
    MessageError,
    Ping,
    ResidentState,
    Unregister,
    armor_id,
    encode_frame,
    hello_role,
    link_key,
    proof,
)
from lips.armor._messages import pack_body
from lips.armor.ftm import (
    FENCED,
    JOB_ACCEPTED,
    JOB_RESULT,
    JOB_RESULT_ACK,
    SUBMIT,
    Fenced,
    JobAccepted,
    JobResult,
    Submit,
)
from lips.armor.space import SPACE_REPLY, SPACE_REQUEST, SpaceReply, SpaceRequest
from lips.armor.submit import Submission, SubmitterArmor, submitter_id
from lips.kernel import Deliver, Effect, Kill, Send, StartTimer
from lips.protocols import ILocalLinkHost, LinkPhase, LocalLink

KEY = link_key(b"k" * 32)
FTM = armor_id("ftm")
SUBMITTER = armor_id(submitter_id("n1-42"))


def daemon(**policy: Any) -> Daemon:
    return Daemon("n1", policy=DaemonPolicy(**policy), types={"echo"}, rng=random.Random(3))


class LocalAttachTests(SynchronousTestCase):
    """L{Daemon.local_attach}: who may attach, and what becomes of one that did."""

    def test_an_ftm_attaches_and_registers(self) -> None:
        """An FTM is a resident with a row in the table and no manager; then it is pinged."""
        d = daemon(ping_interval=1.0)
        handle = d.local_attach(FTM, 3, "ftm", 0.0)
        self.assertIsNotNone(handle)
        effects = d.drain()
        rows = [e.message.row for e in effects if isinstance(e, Send) and e.to is TABLE]
        self.assertEqual(
            [(r.armor, r.type, r.node, r.incarnation) for r in rows], [(FTM, "ftm", "n1", 3)]
        )
        resident = d.residents[FTM]
        self.assertTrue(resident.attached)
        self.assertIsNone(resident.manager)
        self.assertEqual(resident.state, ResidentState.REGISTERING)
        d.registered(FTM, 3, True, "", 0.1)
        self.assertEqual(d.residents[FTM].state, ResidentState.RUNNING)
        self.assertEqual(d.counters["armors.attached"], 1)
        d.drain()
        d.timer((DaemonTimer.PING, (FTM, 3)), 1.1)
        pings = [e for e in d.drain() if isinstance(e, Send) and isinstance(e.message, Ping)]
        self.assertEqual([p.to for p in pings], [LocalPeer(FTM, 3)])

    def test_only_ftms_and_submitters_attach(self) -> None:
        """Any other kind is refused and counted; so is a type that does not go with it."""
        d = daemon()
        self.assertIsNone(d.local_attach(armor_id("echo.app.a"), 1, "echo", 0.0))
        self.assertIsNone(d.local_attach(FTM, 1, "submitter", 0.0))
        self.assertIsNone(d.local_attach(SUBMITTER, 1, "ftm", 0.0))
        self.assertEqual(d.counters["links.refused"], 3)
        self.assertEqual(d.residents, {})
        self.assertIsNotNone(d.local_attach(SUBMITTER, 1, "submitter", 0.0))

    def test_not_over_a_live_one(self) -> None:
        """A second process claiming a running attached id is refused."""
        d = daemon()
        self.assertIsNotNone(d.local_attach(FTM, 1, "ftm", 0.0))
        self.assertIsNone(d.local_attach(FTM, 2, "ftm", 0.1))
        self.assertEqual(d.residents[FTM].incarnation, 1)

    def test_its_link_closing_is_a_detach(self) -> None:
        """Its end unregisters its row and tells nobody: it has no manager."""
        d = daemon()
        handle = d.local_attach(SUBMITTER, 1, "submitter", 0.0)
        assert handle is not None
        d.registered(SUBMITTER, 1, True, "", 0.0)
        d.drain()
        d.ended(handle, "its link closed", 1.0)
        effects = d.drain()
        self.assertEqual([type(e.message) for e in effects if isinstance(e, Send)], [Unregister])
        self.assertEqual(d.counters["armors.detached"], 1)
        self.assertEqual(d.counters["armors.dead"], 0)
        self.assertNotIn(SUBMITTER, d.residents)

    def test_a_hung_one_is_ended_by_its_handle(self) -> None:
        """Missed pings end it like a started process: a Kill of its handle."""
        d = daemon(ping_interval=1.0, ping_misses=2)
        handle = d.local_attach(FTM, 1, "ftm", 0.0)
        d.registered(FTM, 1, True, "", 0.0)
        d.drain()
        now = 0.0
        kills: list[Kill] = []
        for _ in range(4):
            now += 1.0
            d.timer((DaemonTimer.PING, (FTM, 1)), now)
            kills += [e for e in d.drain() if isinstance(e, Kill)]
        self.assertEqual([k.handle for k in kills], [handle])
        self.assertEqual(d.counters["armors.hung"], 1)

    def test_a_submitter_is_not_swept(self) -> None:
        """The FTM's table never places a submitter: the sweep leaves it running."""
        d = daemon()
        d.local_attach(SUBMITTER, 1, "submitter", 0.0)
        d.registered(SUBMITTER, 1, True, "", 0.0)
        d.joined = True
        d.drain()
        d._sweep(1.0)
        calls = [e.message for e in d.drain() if isinstance(e, Send) and e.to is not TABLE]
        self.assertEqual(len(calls), 1)
        call = calls[0]
        d.space_answered(call.call, SpaceReply(call.request.request, True, 0, ((),)), 1.1)
        self.assertEqual([e for e in d.drain() if isinstance(e, Kill)], [])
        self.assertEqual(d.counters["armors.swept"], 0)


@implementer(ILocalLinkHost)
class Host:
    """A local link's host that records what it is told."""

    def __init__(self, allow: bool = True) -> None:
        self.allow = allow
        self.attached: list[AttachHello] = []
        self.lost: list[str] = []

    def armor_hello(self, link: LocalLink, hello: Any) -> bool:
        return False

    def armor_attach(self, link: LocalLink, hello: AttachHello) -> bool:
        self.attached.append(hello)
        return self.allow

    def armor_message(self, link: LocalLink, message: Message) -> None:
        pass

    def armor_pong(self, link: LocalLink, seq: int) -> None:
        pass

    def armor_failed(self, link: LocalLink, reason: str) -> None:
        pass

    def armor_lost(self, link: LocalLink, reason: str) -> None:
        self.lost.append(reason)


class AttachHandshakeTests(SynchronousTestCase):
    """The local link's attach handshake."""

    def link(self, host: Host, key: bytes | None = KEY) -> tuple[LocalLink, StringTransport]:
        link = LocalLink(host, Counter(), Clock(), node="n1" if key else None, key=key)
        transport = StringTransport()
        link.makeConnection(transport)
        return link, transport

    def frames(self, transport: StringTransport) -> list[Frame]:
        out = [f for f in FrameDecoder(1 << 20).feed(transport.value()) if isinstance(f, Frame)]
        transport.clear()
        return out

    def attach(self, link: LocalLink, transport: StringTransport, key: bytes) -> None:
        nonce = b"a" * NONCE_SIZE
        link.dataReceived(encode_frame(AttachHello(FTM, 2, "ftm", nonce).frame()))
        (hello_frame,) = self.frames(transport)
        hello = DaemonHello.from_frame(hello_frame)
        self.assertEqual(hello.node, "n1")
        mine = proof(
            key,
            dialer=True,
            own=FTM,
            peer="daemon.n1",
            dialer_nonce=nonce,
            acceptor_nonce=hello.nonce,
        )
        link.dataReceived(encode_frame(Auth(mine).frame()))

    def test_a_proof_of_the_key_is_welcomed(self) -> None:
        host = Host()
        link, transport = self.link(host)
        self.attach(link, transport, KEY)
        self.assertEqual(
            [(h.armor, h.incarnation, h.type) for h in host.attached], [(FTM, 2, "ftm")]
        )
        self.assertEqual([f.kind for f in self.frames(transport)], [FrameKind.WELCOME])
        self.assertEqual(link.phase, LinkPhase.UP)
        self.assertTrue(link.attached)
        self.assertEqual((link.armor, link.incarnation), (FTM, 2))

    def test_a_wrong_key_is_hung_up_on(self) -> None:
        host = Host()
        link, transport = self.link(host)
        self.attach(link, transport, link_key(b"x" * 32))
        self.assertEqual(host.attached, [])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(link.counters["links.refused"], 1)

    def test_a_refusal_of_the_host_is_hung_up_on(self) -> None:
        host = Host(allow=False)
        link, transport = self.link(host)
        self.attach(link, transport, KEY)
        self.assertEqual(len(host.attached), 1)
        self.assertTrue(transport.disconnecting)
        self.assertNotEqual(link.phase, LinkPhase.UP)

    def test_no_key_no_attaching(self) -> None:
        """A link made without the cluster key refuses attaching processes outright."""
        host = Host()
        link, transport = self.link(host, key=None)
        link.dataReceived(encode_frame(AttachHello(FTM, 1, "ftm", b"a" * NONCE_SIZE).frame()))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(host.attached, [])

    def test_hello_roles(self) -> None:
        self.assertEqual(
            hello_role(AttachHello(FTM, 1, "ftm", b"a" * NONCE_SIZE).frame()), "attach"
        )
        self.assertEqual(hello_role(DaemonHello("n1", b"a" * NONCE_SIZE).frame()), "daemon")
        with self.assertRaises(HandshakeError):
            hello_role(Frame.control(FrameKind.HELLO, {"role": "stranger"}))
        with self.assertRaises(HandshakeError):
            AttachHello.from_frame(
                Frame.control(
                    FrameKind.HELLO,
                    {
                        "role": "attach",
                        "armor": FTM,
                        "incarnation": 0,
                        "type": "ftm",
                        "nonce": b"a" * NONCE_SIZE,
                    },
                )
            )


def fenced(type: str, body: object, epoch: int = 1, source: str = FTM) -> Message:
    return Message.of(FENCED, source, SUBMITTER, 99, Fenced(epoch, type, pack_body(body)))


class SubmitterTests(SynchronousTestCase):
    """The submitter ARMOR: find the FTM, submit until it answers, deliver the end."""

    def setUp(self) -> None:
        self.armor = SubmitterArmor(SUBMITTER, name="app1", job={"tasks": []}, retry=1.0)
        self.armor.start(0.0)

    def sent(self) -> list[Message]:
        return [e.message for e in self.armor.drain() if isinstance(e, Send)]

    def delivered(self, effects: list[Effect]) -> list[Submission]:
        return [e.item for e in effects if isinstance(e, Deliver)]

    def answer_epoch(self, request: Message, holder: str = FTM, epoch: int = 1) -> None:
        asked = SpaceRequest.from_message(request)
        reply = SpaceReply(asked.request, True, 0, (("ftm-epoch", epoch, holder),))
        self.armor.receive(Message.of(SPACE_REPLY, "space.system", SUBMITTER, 5, reply), 0.1)

    def test_it_submits_to_the_epoch_holder(self) -> None:
        (request,) = self.sent()
        self.assertEqual(request.type, SPACE_REQUEST)
        self.answer_epoch(request)
        (submit,) = self.sent()
        self.assertEqual((submit.type, submit.destination), (SUBMIT, FTM))
        self.assertEqual(Submit.from_message(submit), Submit("app1", {"tasks": ()}))

    def test_accepted_then_result(self) -> None:
        self.answer_epoch(self.sent()[0])
        self.sent()
        self.armor.receive(fenced(JOB_ACCEPTED, JobAccepted("app1", "simplex")), 0.2)
        (accepted,) = self.delivered(self.armor.drain())
        self.assertEqual((accepted.accepted, accepted.final), ("simplex", False))
        self.armor.receive(fenced(JOB_RESULT, JobResult("app1", True, {"t": 1})), 0.3)
        effects = self.armor.drain()
        (end,) = self.delivered(effects)
        self.assertTrue(end.final)
        assert end.result is not None
        self.assertEqual(end.result.result, {"t": 1})
        acks = [e.message for e in effects if isinstance(e, Send)]
        self.assertEqual([(m.type, m.destination) for m in acks], [(JOB_RESULT_ACK, FTM)])
        # A result sent again is acknowledged again, and delivered no more.
        self.armor.receive(fenced(JOB_RESULT, JobResult("app1", True, {"t": 1})), 0.4)
        effects = self.armor.drain()
        self.assertEqual(self.delivered(effects), [])
        self.assertEqual(
            [m.message.type for m in effects if isinstance(m, Send)], [JOB_RESULT_ACK]
        )

    def test_an_older_epoch_is_refused(self) -> None:
        self.armor.receive(fenced(JOB_ACCEPTED, JobAccepted("app1", "simplex"), epoch=2), 0.1)
        self.armor.drain()
        self.armor.receive(
            fenced(JOB_RESULT, JobResult("app1", False, None, "old"), epoch=1, source="ftm.x"),
            0.2,
        )
        self.assertEqual(self.delivered(self.armor.drain()), [])
        self.assertEqual(self.armor.counters["messages.fenced"], 1)

    def test_it_submits_again_until_answered_for_good(self) -> None:
        effects = self.armor.drain()
        timers = [e for e in effects if isinstance(e, StartTimer)]
        self.assertEqual([t.at for t in timers], [1.0])
        self.armor.timer(timers[0].key, 1.0)
        requests = [m for m in self.sent() if m.type == SPACE_REQUEST]
        self.assertEqual(len(requests), 1)

    def test_bad_arguments(self) -> None:
        with self.assertRaises(MessageError):
            SubmitterArmor(SUBMITTER, name="Not A Label", job={})
        with self.assertRaises(MessageError):
            SubmitterArmor(SUBMITTER, name="a", job={}, retry=0)
