"""`helm test`: every auth replica refuses a plaintext RPC client (GATEHOUSE_RPC_TLS=mtls).

Usage: python rpc_plaintext_refused.py HOST PORT. Connects to every address HOST resolves to
(each auth replica, behind the headless Service), sends a plaintext Hello frame and expects the
connection to end without a frame back: closed, reset, or a TLS alert. Exits 0 when every
replica refused it, 1 with the reason otherwise (one answered in plaintext, or one could not be
reached, which proves nothing). Standard library only: it runs in the auth image.
"""

import socket
import struct
import sys

TIMEOUT_SECONDS = 10.0
TLS_ALERT = 0x15  # the content type of a TLS record carrying an alert
AGENT = b"helm-test-plaintext"
# A Hello (proto/gatehouse/v1): protocol_min = 1, protocol_max = 127, agent.
HELLO = b"\x08\x01\x10\x7f\x1a" + bytes([len(AGENT)]) + AGENT
FRAME = struct.pack(">I", len(HELLO)) + HELLO


def answer_of(address: tuple[str, int]) -> bytes | None:
    """What the replica at `address` sends back to a plaintext Hello; None when it cut the
    connection."""
    with socket.create_connection(address, timeout=TIMEOUT_SECONDS) as connection:
        connection.sendall(FRAME)
        try:
            return connection.recv(64) or None
        except ConnectionResetError:
            return None


def problem_with(address: tuple[str, int]) -> str | None:
    try:
        answer = answer_of(address)
    except TimeoutError:
        return f"{address[0]}:{address[1]} neither answered nor closed in {TIMEOUT_SECONDS:.0f} s"
    except OSError as exc:
        return f"cannot reach {address[0]}:{address[1]} ({exc}): nothing was shown"
    if answer is None or answer[0] == TLS_ALERT:
        return None
    if answer[0] == 0:
        return f"{address[0]}:{address[1]} answered a plaintext Hello with a frame: {answer!r}"
    return f"{address[0]}:{address[1]} answered something unexpected: {answer!r}"


def main(host: str, port: int) -> int:
    addresses = sorted(
        {info[4][:2] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    )
    problems = [problem for address in addresses if (problem := problem_with(address))]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{len(addresses)} auth replica(s) at {host}:{port} refused a plaintext client")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
