"""One module per ``roadside fleet`` command, each with ``register(sub)`` (see ``fleet.cli``)."""
