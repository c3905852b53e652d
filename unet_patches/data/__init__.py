"""Data: image and mask files read, decoded and prepared for the network, and the datasets made of
them before training sees them.

- :mod:`.imageio`: decoding image files (``read_raw``), pixel types and channels, overlays, PNGs;
- :mod:`.masks`: raw masks -> class indices (mask tables, 0/255, the original's colours);
- :mod:`.normalize`: the normalisation modes, one registry row each; streamed percentiles;
- :mod:`.preprocess`: :class:`~.preprocess.Preprocess`, a file -> network input (channels, resize,
  normalisation), written into checkpoints; resizing;
- :mod:`.config`: the ``data``, ``synthetic`` and ``patches`` sections of ``parameters.json``;
- :mod:`.cache`: each file decoded once into a memory-mapped ``.npy``;
- :mod:`.folders`: pairing images with masks, groups (subjects), loading pairs;
- :mod:`.synthetic`: the seeded generator of lines and ellipses; :mod:`.nuclei`: of touching nuclei;
- :mod:`.patches`: random patches to disk; :mod:`.patch_folder`: reading patch folders;
- :mod:`.pixel_weights`: the U-Net weight map, heavy where objects nearly touch;
- :mod:`.sampling`: on-the-fly random patches, fixed validation windows;
- :mod:`.folds`: the folds of k-fold cross-validation;
- :mod:`.class_weights`: class pixel counts, median-frequency weights;
- :mod:`.inspection`: every check of a data folder at once (``unet-patches inspect``).

Nothing here needs torch but the datasets (:mod:`.patch_folder`'s ``PatchFolder``, :mod:`.sampling`).
"""
