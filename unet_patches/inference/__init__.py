"""Inference: a trained network and what it needs (:class:`~.segmenter.Segmenter`), one prediction
job settled once and run image by image (:mod:`.job`), and the sliding-window algorithm
(:mod:`.tiling`).

- :mod:`.config`: the ``inference`` section of ``parameters.json`` (read without torch);
- :mod:`.segmenter`: :class:`~.segmenter.Segmenter`, from a checkpoint, an ensemble or an ONNX export;
- :mod:`.job`: :class:`~.job.PredictionJob`: precision, compile, window plans decided once, then arrays,
  files, labelled pairs and row blocks predicted;
- :mod:`.ensemble`: several checkpoints averaged in one pass;
- :mod:`.onnx`: an exported ONNX file run by ONNX Runtime (no torch);
- :mod:`.int8`: ``precision: int8`` (OpenVINO + NNCF), its accuracy guard and cache;
- :mod:`.tiling`: window placement, sizing, blend weights, padding, merger, the band loop, the torch engine.

Importing this package (and the segmenter, the job, the blender) imports no torch.
"""
