"""Data: readers, long-tailed subsets, image datasets and transforms, built-in demo data.

Every reader returns a :class:`MultiLabelSet` (ids, an (N, C) {0, 1} label matrix, class names,
image paths or texts).
"""

from dbloss.data.coco import read_coco
from dbloss.data.custom import check_images, missing_images, read_csv
from dbloss.data.synthetic import DemoPaths, generate_demo_dataset
from dbloss.data.images import ImageLoadError, MultiLabelImageDataset, load_image
from dbloss.data.longtail import longtail_visit_order, make_longtail_subset, pareto_target_counts
from dbloss.data.published import PUBLISHED_SUBSETS, fetch_published_subset, load_id_list
from dbloss.data.reuters import huang_validation_split, read_aptemod_cats, read_reuters
from dbloss.data.table import MultiLabelSet
from dbloss.data.transforms import eval_transform, train_transform
from dbloss.data.voc import VOC_CLASSES, read_voc

__all__ = [
    "DemoPaths", "ImageLoadError", "MultiLabelImageDataset", "MultiLabelSet", "PUBLISHED_SUBSETS", "VOC_CLASSES",
    "check_images", "eval_transform", "fetch_published_subset", "generate_demo_dataset", "huang_validation_split",
    "load_id_list", "load_image", "longtail_visit_order", "make_longtail_subset", "missing_images",
    "pareto_target_counts", "read_aptemod_cats", "read_coco", "read_csv", "read_reuters", "read_voc",
    "train_transform",
]
