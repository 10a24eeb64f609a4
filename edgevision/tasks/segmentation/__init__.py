"""Segmentation task: models registered by name, data, loss, metrics."""

from edgevision.tasks.segmentation import models  # noqa: F401  (registers deeplabv3_*, lraspp_*, ...)
