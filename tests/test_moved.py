"""Old import paths of the flat layout keep working, with a warning that names the new place."""

import importlib
import subprocess
import sys

import pytest

from unet_patches.moved import MOVED, REMOVED

OLD_NAMES = {
    "typed": ("build_typed", "coerce", "describe_type"),
    "settings": (
        "COMPILE_CHOICES",
        "PRECISIONS",
        "TRAINING_PRECISIONS",
        "InferenceConfig",
        "check_compile",
        "inference_settings",
        "read_parameters",
    ),
    "imageio": (
        "IMAGE_SUFFIXES",
        "PALETTE",
        "colour_mask",
        "colour_overlay",
        "image_to_array",
        "read_image",
        "read_raw",
        "tiff_page",
        "write_png",
    ),
    "masks": ("AUTO_BINARY_VALUES", "decode_mask", "hex_colour", "mask_tables", "parse_colour", "read_mask"),
    "preprocess": (
        "HISTOGRAM_BINS",
        "NORMALIZE_MODES",
        "DatasetStatistics",
        "Preprocess",
        "percentile_bounds",
        "resize_image",
        "resize_labels",
        "resize_probabilities",
    ),
    "cache": ("CACHE_DIR_NAME", "DecodeCache"),
    "folders": (
        "Matching",
        "Pair",
        "Sample",
        "find_pairs",
        "group_of",
        "is_data_folder",
        "load_pair",
        "load_pairs",
        "match_pairs",
        "read_pair",
    ),
    "synthetic": ("generate_kaggle_layout", "CLASS_NAMES", "SyntheticSpec", "generate_dataset", "generate_sample"),
    "patches": (
        "FLIPS",
        "MANIFEST_NAME",
        "PatchFolder",
        "extract_patches",
        "flip",
        "manifest_preprocess",
        "read_manifest",
        "split_by_source",
        "validation_count",
    ),
    "folds": ("SPLITS_FILE", "Splits", "assign_folds", "split_units", "splits_for"),
    "class_weights": ("check_mask_values", "class_pixel_counts", "median_frequency_weights"),
    "inspection": ("Report", "check_folder", "format_report", "inspect_folder"),
    "config": (
        "AugmentConfig",
        "Config",
        "DataConfig",
        "InferenceConfig",
        "ModelConfig",
        "PatchConfig",
        "SyntheticConfig",
        "TrainingConfig",
        "UPSAMPLING_MODES",
        "PRECISIONS",
        "config_from_dict",
        "default_config",
        "load_config",
        "merge",
        "save_config",
    ),
    "optim": ("OPTIMIZERS", "SCHEDULES", "Progress", "Schedule", "build_optimizer", "set_learning_rate"),
    "augment": ("AUGMENT_OPS", "PRESETS", "BatchAugmenter", "build_augmenter", "probabilities"),
    "loops": ("NonFiniteGradients", "evaluate", "train_one_epoch"),
    "runlog": ("RunLog", "image_panel"),
    "charts": ("line_chart",),
    "run_folder": ("clear", "fork", "held_checkpoints", "listed", "remove_interrupted_writes", "tidy"),
    "resuming": ("restore", "resume"),
    "crossval": ("DONE", "out_of_fold_report", "run_crossval"),
    "experiments": ("Plan", "read_grid", "run_experiments", "write_results"),
    "checkpoints": (
        "CHECKPOINT_FORMAT",
        "DAMAGED",
        "check_resumable",
        "checkpoint_state",
        "load_weights",
        "load_checkpoint",
        "model_from_checkpoint",
        "preprocess_from_checkpoint",
        "save_checkpoint",
    ),
    "tiling": (
        "BLEND_MODES",
        "DEFAULT_STREAM_THRESHOLD_PX",
        "PADDING_MODES",
        "ArraySource",
        "Band",
        "NpyWriter",
        "OutputPlan",
        "PngWriter",
        "RawSource",
        "RowSource",
        "TiffSource",
        "TiffWriter",
        "WindowBlender",
        "TiledPredictor",
        "axis_starts",
        "axis_weights",
        "blend_weights",
        "check_coverage",
        "expand_inputs",
        "output_paths",
        "pad_indices",
        "open_image",
        "place_windows",
        "plan_outputs",
        "predict_labels",
        "sliding_window",
        "write_outputs",
    ),
    "tiling.rows": (
        "STATS_BAND_PIXELS",
        "ArraySource",
        "ChunkRows",
        "NormalizedSource",
        "RawSource",
        "RowSource",
        "StoredRows",
        "column_slice",
    ),
    "tiling.sources": (
        "MAX_DECODE_BYTES",
        "MAX_STREAM_PIXELS",
        "ArraySource",
        "NormalizedSource",
        "RawSource",
        "RowSource",
        "TiffSource",
        "ZarrSource",
        "image_size",
        "is_zarr_store",
        "open_lazily",
    ),
    "tiling.slides": (
        "OPENSLIDE_INSTALL_HINT",
        "SLIDE_SUFFIXES",
        "TIFF_BASED",
        "SlideSource",
        "openslide_module",
        "reads_as_slide",
        "slide_size",
    ),
    "tiling.writers": (
        "BIGTIFF_THRESHOLD_BYTES",
        "BandWriter",
        "NpyWriter",
        "PngWriter",
        "TiffWriter",
        "ZarrWriter",
        "pyramid_levels",
        "temporary_path",
    ),
    "tiling.blocks": ("RowBlocks",),
    "tiling.shared_zarr": ("CHUNK", "ChunkRowFiller", "SharedZarrRows", "marks_folder"),
    "tiling.files": (
        "DEFAULT_STREAM_THRESHOLD_PX",
        "OUTPUT_FORMATS",
        "PROBS_DTYPES",
        "OutputPlan",
        "check_probs_dtype",
        "expand_inputs",
        "open_image",
        "output_paths",
        "plan_outputs",
        "read_whole",
        "remove_stale_parts",
        "write_outputs",
    ),
    "tiling.placement": (
        "axis_starts",
        "check_coverage",
        "column_strips",
        "padded_size",
        "place_windows",
        "pair",
        "stride_for",
    ),
    "tiling.sizing": (
        "AUTO_WINDOW",
        "WINDOW_CHOICES",
        "Window",
        "WindowPlan",
        "auto_overlap",
        "check_window",
        "describe",
        "plan_window",
        "windows_per_pass",
    ),
    "tiling.blending": ("BLEND_MODES", "MIN_WEIGHT", "axis_weights", "blend_weights", "weight_sums"),
    "tiling.padding": ("PADDING_MODES", "PaddedRows", "pad_indices"),
    "tiling.merger": ("Band", "RowMerger", "argmax_classes", "assemble"),
    "tiling.blender": ("ACTIVATIONS", "STRIP_COLUMNS", "WindowBlender"),
    "tiling.engine": ("TiledPredictor", "predict_labels", "sliding_window"),
    "tiling.network": ("inductor_freezing", "inference_copy", "resolve_device"),
    "sharding": (
        "Shard",
        "finish_shard",
        "gather_report",
        "merge_report",
        "predict_row_block",
        "row_block",
        "shard_from",
        "share",
        "write_shard_report",
    ),
    "compiling": (
        "MIN_NETWORK_PIXELS",
        "PAYBACK_SECONDS",
        "PlannedWork",
        "compile_for_job",
        "planned_work",
        "settle_job",
    ),
    "ensemble": ("ProbabilityEnsemble", "checkpoint_paths"),
    "onnx_network": (
        "ONNX_INSTALL_HINT",
        "OnnxNetwork",
        "blender_options",
        "read_export",
        "require_onnx_package",
        "sidecar_path",
    ),
    "quantizing": (
        "BUILD_MIN_PIXELS",
        "GUARD_MIN_IOU",
        "INT8_INSTALL_HINT",
        "Guard",
        "Int8Network",
        "cache_folder",
        "int8_for_job",
        "int8_network",
        "int8_network_of",
    ),
    "export": ("EXPORT_FORMATS", "OUTPUTS", "OnnxNetwork", "export_checkpoint", "export_network", "sidecar_path"),
    "serving": (
        "IMAGE_COLUMN",
        "MAX_PIXELS",
        "decode_image",
        "encode_png",
        "export_mlflow",
        "require_mlflow",
        "segment_table",
    ),
    "submission": ("choose_class", "image_ids", "write_submission"),
    "rle": ("decode", "encode"),
    "api": ("Segmenter", "evaluate_folder", "predict", "predict_files", "score_pairs"),
    "training": ("Run", "build_run", "evaluate", "fit", "run_name_for", "run_state", "train_one_epoch", "train_run"),
    "data": (
        "DataSources",
        "add_int8_windows",
        "int8_windows",
        "make_datasets",
        "make_loader",
        "resolve_class_weights",
        "resolve_folder",
        "set_epoch",
    ),
}
"""The public names (``__all__``) of every module of the flat layout at 4084194, before it moved."""


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_moved_module_names_an_existing_one(old):
    new = importlib.import_module(MOVED[old])
    assert new.__name__ == MOVED[old]


def test_an_old_path_gives_the_new_modules_names_and_warns():
    code = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    from unet_patches.resuming import resume\n"
        "    from unet_patches.tiling.files import expand_inputs\n"
        "import unet_patches.training.resuming as new_resume, unet_patches.files.plan as new_plan\n"
        "assert resume is new_resume.resume and expand_inputs is new_plan.expand_inputs\n"
        "print('|'.join(str(w.message) for w in caught))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "unet_patches.resuming has moved to unet_patches.training.resuming" in result.stdout
    assert "unet_patches.tiling.files has moved to unet_patches.files.plan" in result.stdout


def test_the_public_names_stay_where_they_were():
    import unet_patches
    import unet_patches.training
    from unet_patches.api import Segmenter, evaluate_folder, predict, predict_files

    assert (unet_patches.Segmenter, unet_patches.predict) == (Segmenter, predict)
    assert (unet_patches.evaluate_folder, unet_patches.predict_files) == (evaluate_folder, predict_files)
    assert callable(unet_patches.training.fit) and callable(unet_patches.training.resume)


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_every_old_name_resolves_or_names_what_replaced_it(old):
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(f"unet_patches.{old}")
    for name in OLD_NAMES[old]:
        if (f"unet_patches.{old}", name) in REMOVED:
            with pytest.raises(AttributeError, match=rf"unet_patches\.{old}\.{name} was removed; use unet_patches\."):
                getattr(module, name)
        else:
            assert getattr(module, name) is not None, f"{old}.{name}"
