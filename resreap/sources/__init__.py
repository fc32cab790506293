"""Event sources: CLOSE_WAIT transitions, from BPF (the tracepoint) or from
polling sock_diag, behind one interface (events.EventSource).  Imports
host facts and the shared base."""
