"""resreap: find processes that leak TCP sockets in CLOSE_WAIT and reap them."""

__version__ = "0.1.0"
