"""ER/PR/HER2 status from H&E (Gamble et al. 2021, Communications Medicine 1:14).

- :mod:`bcpath.erpr.inference`: stage 1, batched patch inference over a slide's tiles.
- :mod:`bcpath.erpr.heatmaps`: patch-probability heatmaps.
- :mod:`bcpath.erpr.stage2`: stage 2, slide-level features from patch predictions and the
  logistic regression that turns them into a slide's probability of being biomarker-positive.
- :mod:`bcpath.erpr.training`: stage 1 training on patches drawn by :mod:`bcpath.erpr.sampling`.
"""
