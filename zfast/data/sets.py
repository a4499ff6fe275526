"""Which SEDs form each set of a training run, and the library a run names.

zfast-train and ``zfast.predict(templates="training")`` both call these with the run's settings, so the training
SEDs a template fit uses are exactly those the network trained on.
"""

from __future__ import annotations

import torch

from .augment import split_by_sed
from .sed_library import SEDLibrary


def load_library(name: str) -> SEDLibrary:
    """The library a run names: "default" (built in) or the path of a library file (``zfast-sed build``)."""
    return SEDLibrary.default() if name == "default" else SEDLibrary.load(name)


def run_splits(library: SEDLibrary, *, split_seed: int = 0, holdout_sfh: str = "", train_seds: int = 0) -> dict:
    """{"train", "val", "test"[, "holdout"]} → SED indices: ``split_by_sed`` of the library (seed ``split_seed``);
    with ``holdout_sfh``, the SEDs of that star-formation-history recipe (params ``sfh_type``) are taken out of all
    three and form "holdout"; with ``train_seds``, a seeded random subset of the training SEDs (val and test
    unchanged, so runs of different sizes share their test set)."""
    splits = split_by_sed(len(library), seed=split_seed)
    if holdout_sfh:
        sfh = library.params.get("sfh_type")
        if sfh is None:
            raise ValueError("holdout_sfh needs a library with an sfh_type parameter (zfast-sed build libraries have one)")
        held = torch.tensor([str(t) == holdout_sfh for t in sfh], dtype=torch.bool)
        if not bool(held.any()):
            raise ValueError(f"holdout_sfh {holdout_sfh!r}: no such recipe in the library ({sorted(set(map(str, sfh)))})")
        splits = {name: part[~held[part]] for name, part in splits.items()}
        splits["holdout"] = torch.nonzero(held).flatten()
    if train_seds:
        train = splits["train"]
        if train_seds > train.numel():
            raise ValueError(f"train_seds = {train_seds} but the training split has {train.numel()} SEDs")
        pick = torch.randperm(train.numel(), generator=torch.Generator().manual_seed(split_seed + 1))[:train_seds]
        splits["train"] = train[pick].sort().values
    return splits
