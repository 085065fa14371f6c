"""Load benchmarks for the broker and the peers it is compared with.

Layout (each module has one job, so later suites can reuse the parts):

- ``peers/``: servers the broker is compared with (the tutorial's naive chat server, Node ``ws``).
- ``targets``: what can be measured: a server to launch plus the endpoint and protocol to speak.
- ``server``: launches a target's server on a free loopback port, measures its CPU and memory.
- ``wire``: the benchmark payload and the client frames of each protocol (JSON, MessagePack).
- ``fastws``: the generator's lean WebSocket client (a few microseconds per received frame).
- ``rawws``: hand-made WebSocket clients that subscribe and then never read (stalled clients).
- ``kernelq``: what the kernel holds for a connection (sock_diag lookups, ``/proc/net/tcp``).
- ``generator/``: the load generator (subscriber worker processes and an open-loop publisher;
  connection churn workers).
- ``fdlimit``: raises the open-file limit for 10,000 connections.
- ``stats``: latency percentiles.
- ``scenarios``: scenario functions, each one server + one load run -> one result.
- ``fanout``, ``population``, ``idle``, ``connrate``: the suite's scenarios (step-up fan-out;
  many channels and 10,000 connections; memory per idle connection; connection rate).
- ``report``: tables, ratios and JSON output.
- ``goals``, ``suite_report``, ``plot``: the suite's results and the four performance goals judged;
  its markdown and JSON; its PNG.
- ``stalled``: the command line of the stalled-client isolation benchmark.
- ``suite``: the command line of the whole suite.
"""
