"""Runs on the lab's client (its Debian python3, standard library only): one redis connection,
a PING every 0.1 s for SECONDS, then one JSON line of what came back. Prints "connected" first,
once the connection works, for the test to act on.

Usage: python3 pinger.py HOST PORT SECONDS
"""

import json
import socket
import sys
import time

# A reply later than this counts as lost: TCP's own retransmission takes 0.2 s or more.
PATIENCE = 2.0


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    sent = answered = 0
    worst = 0.0
    with socket.create_connection((host, port), timeout=PATIENCE) as conn:
        reader = conn.makefile("rb")
        print("connected", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            asked = time.monotonic()
            sent += 1
            try:
                conn.sendall(b"PING\r\n")
                if reader.readline() != b"+PONG\r\n":
                    break
            except OSError:  # a time-out or a reset
                break
            answered += 1
            worst = max(worst, time.monotonic() - asked)
            time.sleep(0.1)
    print(json.dumps({"sent": sent, "answered": answered, "worst": round(worst, 3)}), flush=True)


if __name__ == "__main__":
    main()
