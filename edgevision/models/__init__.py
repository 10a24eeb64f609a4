"""Model families. Importing this package registers every family's variants."""

import importlib

# One module per family; each registers its variants on import.
_FAMILIES = [
    "mobilenetv1",
    "mobilenetv2",
    "mobilenetv3",
    "mnasnet",
    "efficientnet_lite",
    "emo",
    "edgevit",
    "efficientformer",
    "moat",
    "nasnet",
    "secure_mobilenet",  # DeepPeep's Secure MobileNet-V1 (issue 16 defences)
    "netconfig",  # networks described as JSON (search results, recovered architectures)
]

for _name in _FAMILIES:
    importlib.import_module(f"{__name__}.{_name}")
