#!/usr/bin/env python
"""Train a U-Net: `python train.py -e 100 -l 0.01 -b 16 -f patches_s96`.

A thin wrapper kept for the original's command line; it is `unet-patches train`.
Run it under `torchrun --nproc_per_node N train.py ...` for distributed training.
"""

import sys

from unet_patches.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
