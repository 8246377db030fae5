"""Datasets (embedded default ``mnist5k`` plus local files; never a download) and plain-torch augmentation.

    from bitbench.data import load_dataset, list_datasets, Augment, batches
    ds = load_dataset("mnist5k")            # float32 N,C,H,W in [0, 1]; int64 labels
"""
from .augment import Augment, autoaugment, batches, cutout, random_crop, random_hflip
from .loaders import (DataError, Dataset, dataset_from_arrays, default_data_dir, describe_datasets, list_datasets,
                      load_dataset, reads_local_files, register_dataset)

__all__ = ["Dataset", "DataError", "list_datasets", "describe_datasets", "load_dataset", "default_data_dir",
           "reads_local_files", "dataset_from_arrays", "register_dataset",
           "Augment", "random_crop", "random_hflip", "cutout", "autoaugment", "batches"]
