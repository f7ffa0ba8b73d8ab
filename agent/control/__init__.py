"""The control plane: what the city may ask a pole to do, and everything such a request touches.

One place for the commands (``{prefix}/{site}/{device}/cmd/{name}``, docs/mqtt.md) and what they
need: the queue that runs them (``commands``), the small view of the agent they may use
(``host.ControlHost``), one module per command family registering its own schema and handler
(``model``: ``cmd/model``; ``reload``: ``cmd/reload`` and SIGHUP; ``shadow``: ``cmd/shadow``,
``cmd/promote``, ``cmd/abort``), the installed model versions (``store``) and the signatures
that guard all of it (``signing``).

"Bundle" means two different things here, each with its own module:

- ``bundle_io``: a *model bundle*, a tar of one signed artefact folder on the wire (inline in
  ``cmd/model`` / ``cmd/shadow`` or by url), fetched, verified and unpacked into the store;
- ``device_bundle``: a *device bundle*, the signed folder ``roadside flash`` writes per device
  and ``roadside agent --bundle`` checks before it starts.

This ``__init__`` imports nothing: the city side (fleet/) imports ``signing`` and ``bundle_io``
without pulling in the agent's runtime, and ``agent.config`` imports ``signing`` while it loads.
"""
