"""Stain: the colour maths that the systems share, below them (issue 16 item 5).

- :mod:`bcpath.stain.deconvolution`: optical density, colour deconvolution (Ruifrok &
  Johnston), stain vectors, luminance, LAMT; used by IHC scoring, RAM-CNN inputs, the IHC
  nuclei detector and the demo TMA.
- :mod:`bcpath.stain.normalise`: Vahadane stain normalisation of H&E (nuclei training and
  inference).
- :mod:`bcpath.stain.augment`: random stain and intensity augmentation of H&E tiles (torch).
- :mod:`bcpath.stain.ihc_render`: H&E re-rendered as DAB-H IHC (nuclei and IHC training,
  proliferation's hematoxylin channel).

Import from the modules; this package imports nothing, so the numpy-only parts stay free of torch.
"""
