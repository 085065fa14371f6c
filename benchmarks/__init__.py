"""Load benchmarks for the broker and the peers it is compared with.

Layout (each module has one job, so later suites can reuse the parts):

- ``peers/``: servers the broker is compared with (the tutorial's naive chat server).
- ``targets``: what can be measured: a server to launch plus the endpoint and protocol to speak.
- ``server``: launches a target's server on a free loopback port, measures its CPU and memory.
- ``wire``: the benchmark payload and the client frames of each protocol.
- ``rawws``: hand-made WebSocket clients that subscribe and then never read (stalled clients).
- ``kernelq``: what the kernel holds for a connection (sock_diag lookups, ``/proc/net/tcp``).
- ``generator/``: the load generator (subscriber worker processes and an open-loop publisher).
- ``stats``: latency percentiles.
- ``scenarios``: scenario functions, each one server + one load run -> one result.
- ``report``: tables, ratios and JSON output.
- ``stalled``: the command line of the stalled-client isolation benchmark (issue #3).
"""
