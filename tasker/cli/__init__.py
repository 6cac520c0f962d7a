"""The ``tasker`` command line."""
