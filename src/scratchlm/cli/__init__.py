"""The command line: a command table (`main.py`) and one thin module per command group.

Nothing imports this package; it only calls the library.
"""
