"""The ``roadside`` subcommands, one module each.

A module here has ``register(sub)``, which adds its parser to the ``roadside`` subparsers and sets
``func`` (called with the parsed arguments, returning the exit status), and may set ``ORDER``, its
place in ``roadside --help`` (lower first; modules without one come last, by name). ``agent.cli``
finds the modules with pkgutil and never names them: a new command is a new file here.

Building the parser must stay cheap and work on a pole: anything beyond the standard library and
``agent`` (torch, the city side, the demo) is imported inside ``func``, not at the top.
"""
