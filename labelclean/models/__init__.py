"""Backbones: feature extractor plus a linear head, from a strict registry."""

from labelclean.models.backbones import BACKBONES, Backbone, build_backbone, linear_probe

__all__ = ["BACKBONES", "Backbone", "build_backbone", "linear_probe"]
