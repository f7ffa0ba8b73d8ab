"""Development tools for a checkout: ``roadside demo`` and the in-process MQTT broker it falls back on.

Not part of the device install: ``Dockerfile.jetson`` copies ``agent/`` only, so none of this
ships to a pole (``tests/test_dockerfile.py`` checks it). ``pip install -e .`` in a checkout
installs it beside ``agent``; ``roadside demo`` says so where it is missing.

- ``run``: the demo itself (brokers, the agent as a child process, the scene replayed, the summary)
- ``scene``: the street scene, from held-out recordings or generated
- ``report``: what the city side received, as numbers and as text
- ``broker``: a small MQTT 3.1.1 broker on 127.0.0.1, for when mosquitto is not installed
"""
