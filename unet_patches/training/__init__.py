"""Training: the run settings, datasets, the training loop and what surrounds it (run folders,
resume, cross-validation, experiment grids).

- :mod:`.config`: the typed :class:`~.config.Config` of ``parameters.json`` (the ``training`` and
  ``augment`` sections here, the others from the rooms they configure);
- :mod:`.datasets`: the datasets named by ``training.folder``, split, loaders over this rank's shard;
- :mod:`.optim`: optimizers and schedules by name, the run's clock;
- :mod:`.augment`: strong batch augmentation presets;
- :mod:`.loops`: one epoch of training, one pass of validation;
- :mod:`.validation`: whole held-back images predicted and scored, with the score's spread;
- :mod:`.runlog`: TensorBoard and the per-epoch log line;
- :mod:`.state`: a run's state: what a checkpoint saves of it, and restoring it;
- :mod:`.run_folder`: a run folder's checkpoints between runs;
- :mod:`.run`: a run in named steps (:func:`fit`);
- :mod:`.resuming`: a run continued from its ``last.pt`` (:func:`resume`);
- :mod:`.crossval`, :mod:`.experiments`, :mod:`.charts`: k-fold cross-validation, grids of runs, charts.
"""

from .resuming import resume
from .run import fit

__all__ = ["fit", "resume"]


def __getattr__(name: str) -> object:
    """The names of the earlier ``unet_patches.training`` module, now in :mod:`.run`, :mod:`.state` and
    :mod:`.loops`."""
    from . import loops, run, state

    for module in (run, state, loops):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
