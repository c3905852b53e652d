"""Ways out of the toolkit: exported networks (ONNX, TorchScript), an MLflow model to serve,
Kaggle run-length submissions, and int8 calibration windows for older checkpoints.

- :mod:`.export`: one checkpoint's network as ONNX or TorchScript with a sidecar JSON;
- :mod:`.serving`: an MLflow pyfunc model serving labels over HTTP;
- :mod:`.submission`: a run-length CSV of every test image;
- :mod:`.rle`: Kaggle run-length text;
- :mod:`.calibrate`: a checkpoint given the int8 calibration windows it lacks.
"""
