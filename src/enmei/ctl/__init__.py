"""``enmei ctl``: local control of a running supervisor over a UNIX socket in its state dir.

``protocol`` (the wire format and its bounds, shared by both ends), ``server`` (in the engine's loop),
``client`` (what the CLI uses). No token: the socket is mode 0600 in a 0700 state dir, so the file
system's permissions are the authentication.
"""

from enmei.ctl.protocol import SOCKET_NAME, CtlError

__all__ = ["SOCKET_NAME", "CtlError"]
