"""Reporting: a run's report as tables (console, Markdown), and comparisons of several runs
(Markdown, a self-contained HTML page, plots), written atomically.

Internal: import from the modules.
"""

__all__: list[str] = []
