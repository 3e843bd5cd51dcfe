"""
Options and service construction shared by the MessageServer and FixServer roles.

Both roles are the same server: a FixServer holds the System Tuple Space (node state),
a MessageServer an application's tuple space.
"""

from __future__ import annotations

import os
import random
import socket
from typing import Any

from OpenSSL import crypto
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import ssl
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.python import usage

from lips.protocols import MessageServerFactory
from lips.server import LocalBackend, MessageServer
from lips.space import TupleSpace
from lips.tuples import Limits

__all__ = ["ServerOptions", "ServerService", "make_server_service"]


def _positive(name: str, lo: int) -> Any:
    def convert(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be an integer, not {value!r}") from None
        if n < lo:
            raise usage.UsageError(f"--{name} must be at least {lo}")
        return n

    return convert


class ServerOptions(usage.Options):
    """Command-line options of a tuple-space server."""

    default_port = 7010
    role = "msgserver"

    optParameters: list[Any] = [
        ["listen", "l", None, "Endpoint to listen on (default tcp:PORT:interface=127.0.0.1)."],
        ["name", None, None, "Name of this server (default HOST-ROLE)."],
        ["tls-cert", None, None, "PEM certificate: serve TLS on the --listen endpoint."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        [
            "tls-client-ca",
            None,
            None,
            "PEM CA certificate: require client certificates it signed.",
        ],
        [
            "max-tuple-size",
            None,
            1 << 20,
            "Largest encoded tuple, bytes.",
            _positive("max-tuple-size", 16),
        ],
        ["max-arity", None, 64, "Most fields in a tuple.", _positive("max-arity", 1)],
        ["max-depth", None, 8, "Deepest nesting of a tuple.", _positive("max-depth", 1)],
        [
            "log-limit",
            None,
            4096,
            "Answers remembered per process for retries.",
            _positive("log-limit", 1),
        ],
    ]

    def postOptions(self) -> None:
        if self["listen"] is None:
            self["listen"] = f"tcp:{self.default_port}:interface=127.0.0.1"
        if self["name"] is None:
            self["name"] = f"{socket.gethostname()}-{self.role}"
        cert, key, ca = self["tls-cert"], self["tls-key"], self["tls-client-ca"]
        if (cert is None) != (key is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if ca is not None and cert is None:
            raise usage.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        for path in (cert, key, ca):
            if path is not None and not os.path.isfile(path):
                raise usage.UsageError(f"no such file: {path}")
        self["tls"] = _tls_options(cert, key, ca) if cert is not None else None
        from twisted.internet import reactor

        try:
            serverFromString(reactor, self["listen"])
        except (ValueError, TypeError, KeyError) as e:
            raise usage.UsageError(f"bad --listen endpoint {self['listen']!r}: {e}") from None
        try:
            self["limits"] = Limits(
                max_arity=self["max-arity"],
                max_depth=self["max-depth"],
                max_size=self["max-tuple-size"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def _tls_options(cert: str, key: str, ca: str | None) -> ssl.CertificateOptions:
    try:
        with open(cert, "rb") as f:
            certificate = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
        with open(key, "rb") as f:
            private_key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
        ca_certs = []
        if ca is not None:
            with open(ca, "rb") as f:
                ca_certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, f.read()))
    except crypto.Error as e:
        raise usage.UsageError(f"cannot load TLS material: {e}") from None
    return ssl.CertificateOptions(
        privateKey=private_key,
        certificate=certificate,
        verify=ca is not None,
        caCerts=ca_certs or None,
        requireCertificate=ca is not None,
    )


class ServerService(service.MultiService):
    """A tuple-space server: its listener, and the core it serves (C{core})."""

    def __init__(self, core: MessageServer) -> None:
        service.MultiService.__init__(self)
        self.core = core


def make_server_service(options: ServerOptions, reactor: Any = None) -> ServerService:
    """A MultiService running one tuple-space server as C{options} say."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    limits: Limits = options["limits"]
    space = TupleSpace(limits, options["log-limit"])
    core = MessageServer(
        LocalBackend(space),
        reactor,
        name=options["name"],
        limits=limits,
        rng=random.SystemRandom(),
    )
    factory = MessageServerFactory(core)
    top = ServerService(core)
    endpoint = serverFromString(reactor, options["listen"])
    if options["tls"] is not None:
        endpoint = wrapServerTLS(options["tls"], endpoint)
    listener = StreamServerEndpointService(endpoint, factory)
    # Fail startup (twistd exits non-zero) when the endpoint cannot listen, as strports do.
    listener._raiseSynchronously = True
    listener.setServiceParent(top)
    return top
