"""Classification with a second, yes/no output derived from a class -> attribute table:
M-MobileNet (``m_mobilenetv1_100``, ``m_mobilenetv2_100``: species + consumability). Importing
this package registers the models and the "attributes" task."""

from edgevision.tasks.attributes import m_mobilenet  # noqa: F401  (registration)
from edgevision.tasks.base import register_task

register_task("attributes", "edgevision.tasks.attributes.task:AttributeTask")
