"""
The Deferred-returning client API of LiPS.
"""

from lips.client._client import NoServerAvailable, TupleSpaceClient, connect

__all__ = ["NoServerAvailable", "TupleSpaceClient", "connect"]
