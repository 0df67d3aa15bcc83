"""Whether something listens on a TCP address, asked the way a listener binds.

The probe binds with SO_REUSEADDR, so the connections of a stopped server still closing
(TIME_WAIT, FIN_WAIT) do not count, while any listener still does, one bound with SO_REUSEPORT
included: it refuses a socket without that option.

    something_listens_on("127.0.0.1", 8000)  # True, False; OSError for any other bind error
"""

from __future__ import annotations

import errno
import socket


def something_listens_on(host: str, port: int) -> bool:
    """True when binding `host`:`port` fails with EADDRINUSE; raises the bind's other errors
    (an address this host does not have, a privileged port)."""
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False
