"""What a model is for: one subpackage per task (heads, data, loss, metrics, drawing).

Importing this package registers the task models (``ssdlite_emo_1m``, ``lraspp_...``,
``fusionactnet``, ...) in :mod:`edgevision.registry`.
"""

from edgevision.tasks import attributes, detection, segmentation, sequence  # noqa: F401  (registration)
