"""The load generator: subscriber worker processes plus one open-loop publisher process.

``run.LoadRun`` is the entry point: it spawns the processes, drives them through
ready -> warm-up -> measure -> drain over pipes (``control``), and merges their reports into one
``LoadResult``. ``subscribers`` holds the worker side (many WebSocket clients per process, each
checking loss and order and recording latency), ``publisher`` the clock-scheduled sender.
"""

from benchmarks.generator.control import LoadSpec
from benchmarks.generator.run import LoadError, LoadResult, LoadRun

__all__ = ["LoadError", "LoadResult", "LoadRun", "LoadSpec"]
