"""The one error of the wire protocol, raised by the codec, the specs and the message checks alike, so
the gateway answers every refused frame the same way: ``code`` goes back in an ``error`` reply."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A frame that cannot be accepted; ``code`` is what goes back in the ``error`` reply."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
