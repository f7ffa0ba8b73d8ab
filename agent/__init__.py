"""roadside edge agent: sensor streams in, local inference, compact alerts out.

This package must import without torch: a device installs only numpy, scipy,
onnxruntime and paho-mqtt. The signal front-ends live here (``agent.features``)
and the compression pipeline imports them, so training and the street see the
same numbers.
"""

__version__ = "0.1.0"
