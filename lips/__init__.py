"""
LiPS: a fault-tolerant Linda tuple space on Twisted.

The programming surface is small: connect with L{lips.client.connect} (Deferreds) or
L{lips.blocking.connect} (plain scripts), then C{out}, C{in_}, C{rd}, C{inp}, C{rdp}.
Templates use formal types (C{int}, C{float}, C{str}, C{bytes}, C{bool}) and L{ANY}.
"""

from lips.errors import (
    CheckpointError,
    ConnectionLost,
    LipsError,
    OutcomeUnknown,
    RequestError,
    Timeout,
)
from lips.tuples import ANY, Limits, Template, TemplateError, TupleError, TupleTooLarge

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "CheckpointError",
    "ConnectionLost",
    "Limits",
    "LipsError",
    "OutcomeUnknown",
    "RequestError",
    "Template",
    "TemplateError",
    "Timeout",
    "TupleError",
    "TupleTooLarge",
    "__version__",
]
