"""One trace at a time in a process.

``torch.export`` (and the ONNX export built on it) and the first calls of a ``torch.compile``d net
install process-wide tracing state (dispatch and fake-tensor modes, dynamo's frame hook). Two at
once in different threads break each other: a conversion exporting ``model.onnx`` beside the
service's background export of an earlier version failed with "Failed to export the model with
torch.export". Every such trace here holds :data:`TRACING`.
"""

from __future__ import annotations

import threading

TRACING = threading.RLock()
