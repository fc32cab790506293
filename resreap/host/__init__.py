"""Host facts: what the kernel and /proc say about sockets and processes
(sock_diag, /proc/net, network namespaces, /proc/PID, cgroups).  The
lowest layer: it imports only the shared base (model, errors)."""
