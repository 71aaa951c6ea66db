"""The networks before a method changes them (layer 2 of the package, docs/DESIGN.md).

* :mod:`dbloss.models.classifier`: backbone + neck + linear classifier (``build_model``), and the
  feature head for precomputed features;
* :mod:`dbloss.models.backbones`: timm and CLIP backbones (optional extras);
* :mod:`dbloss.models.weights`: initial weights and which stages they freeze;
* :mod:`dbloss.models.pretrain`: a backbone pretrained on a balanced single-label set (``weights=PATH``).
"""
