"""segharness engine: registry, suites, runner, timing, store, reports, gate and CLI.

The engine knows no method; trials become known when the CLI imports ``methods``.
"""

__version__ = "0.1.0"
