"""Staged model rollouts gated on shadow behaviour (issue 16; docs/rollouts.md, "City side").

plan (stages, canaries spread over sites) · gates (figures -> breaches, defaults) · store (SQL) ·
messages (the commands, built the same every time) · sender (MQTT QoS 1 as operations) ·
bundles (read a bundle, serve bundles by sha256) · controller (the resumable state machine) ·
service (start / run, shared by CLI, tests, bench) · simpole (a simulated pole's side) ·
kit (toy signed bundles and a simulated fleet) · bench (``roadside fleet rollout bench``).
"""
