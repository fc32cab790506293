"""A server with a socket leak, run as a systemd service in the test
container: it reads each connection to its end (the peer's FIN), then
keeps the socket forever.  SIGTERM ends it the Python way (killed by the
signal), which Restart=on-failure takes as a clean stop: it stays down
unless someone starts it again.  With "stubborn" it ignores SIGTERM: a kill
then waits -w before its SIGKILL."""

import signal
import socket
import sys

port = int(sys.argv[1])
if sys.argv[2:] == ["stubborn"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)
kept = []
while True:
    conn, _ = listener.accept()
    while conn.recv(4096):
        pass
    kept.append(conn)  # the leak: never closed
