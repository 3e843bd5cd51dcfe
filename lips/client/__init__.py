"""
The Deferred-returning client API of LiPS.
"""

from lips.client._client import TupleSpaceClient, connect

__all__ = ["TupleSpaceClient", "connect"]
