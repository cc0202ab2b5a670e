"""A real SMTP server on loopback for the alert tests (aiosmtpd, Debian's
python3-aiosmtpd): every message it accepts is written to DIR as <n>.eml. With
--user and --password it requires AUTH (PLAIN or LOGIN, allowed without TLS on
loopback) and refuses any other credentials with 535.

Prints "READY <port>" once it listens; stops on SIGTERM or when stdin closes.
"""

import argparse
import asyncio
import os
import signal
import socket
import sys

import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.directory, f"{self.count}.eml")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(envelope.original_content or envelope.content)
        # Renamed into place, so a reader never sees half a message.
        os.rename(tmp, path)
        return "250 OK"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            auth_data is not None
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return check


# AUTH without TLS is what the test wants, on loopback only.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


def free_port():
    # aiosmtpd's controller cannot listen on port 0 (it connects to itself to check).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    a = p.parse_args()
    kwargs = {}
    if a.user is not None:
        kwargs = dict(
            authenticator=authenticator(a.user, a.password or ""),
            auth_required=True,
            auth_require_tls=False,
        )
    port = free_port()
    c = Controller(Sink(a.dir), hostname="127.0.0.1", port=port, **kwargs)
    c.start()
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    loop.run_until_complete(stop.wait())
    c.stop()


if __name__ == "__main__":
    main()
