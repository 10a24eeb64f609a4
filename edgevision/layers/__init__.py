"""Blocks and helpers shared by two or more model families that ``timm.layers`` does not provide
(e.g. :mod:`edgevision.layers.attention`: multi-head attention on tokens and window partitioning
for EMO; :mod:`edgevision.layers.shapes`: padding, cropping and map/token moves that
trace with torch.fx and export with dynamic sizes, for EMO, EdgeViT, EfficientFormer, NASNet-A).

Convolution blocks, squeeze-excite, DropPath and Mlp come from ``timm.layers``; the mobile
CNNs (MobileNetV1/V2/V3, MnasNet, EfficientNet-Lite) are timm's own models.
"""
