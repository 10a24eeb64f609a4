"""Detection task: models registered by name, data, loss, metrics.

Models (this package's ``zoo``): ``ssdlite_<backbone>``, ``retinanet_<backbone>`` on every
classifier of the registry and ``ssdlite320_mobilenetv3_large_100`` (torchvision's COCO
configuration); torchvision's detectors with edgevision's checks and export view (``api``).
The engine's task (``task.py``), data, metrics and drawing live beside them.
"""

from edgevision.tasks.detection import zoo  # noqa: F401  (registers the detectors)
