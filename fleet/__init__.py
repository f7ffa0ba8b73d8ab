"""The city side of roadside: what receives, stores and steers the poles' output.

Never installed on a pole (the device image copies only ``agent/``); it reuses the agent's
wire formats (``agent.alerts``, ``agent.schema``) so both ends speak one format.
"""
