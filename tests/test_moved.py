"""Old import paths of the flat layout keep working, with a warning that names the new place."""

import importlib
import subprocess
import sys

import pytest

from unet_patches.moved import MOVED


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
