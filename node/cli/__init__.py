"""The ``comity`` command line: one typer app (``main``), one module per command group."""
