"""Errors of the overlay's sans-I/O layers (Noise handshake, transport, framing).

Shaped like h11's: one base type the adapter catches, split by who broke the
protocol. Anything else escaping these layers is a bug.

* `RemoteOverlayError`: the peer sent bytes the protocol forbids (an
  oversized frame, a ciphertext that does not authenticate, ...). The adapter
  drops the connection and may log the peer.
* `LocalOverlayError`: our own code asked for something the protocol forbids
  (a plaintext above the Noise cap, input after a stream failed, ...).
"""

from __future__ import annotations

from plasm_grpc.core.errors import PlasmError


class OverlayProtocolError(PlasmError):
    """The overlay protocol was broken; the connection cannot go on."""


class RemoteOverlayError(OverlayProtocolError):
    """The peer broke the overlay protocol."""


class LocalOverlayError(OverlayProtocolError):
    """This node tried to break the overlay protocol (a bug or a misuse of the API)."""
