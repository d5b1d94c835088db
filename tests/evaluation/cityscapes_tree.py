"""A tiny synthetic Cityscapes-layout val tree (leftImg8bit + gtFine labelIds / labelTrainIds /
instanceIds) for running the official evaluator offline."""
import os

import numpy as np
from PIL import Image

# label ids used: road, building, vegetation, sky (stuff), person, car (instances), and two void
# ids (0 unlabeled, 4 static) that map to train id 255
LABEL_IDS = [7, 11, 21, 23, 24, 26, 0, 4]
INSTANCE_IDS = {24, 26}


def write_tree(root, n_images=3, h=16, w=32, seed=0):
    """Write the tree under ``root``; returns (dataset dicts, gt_dir)."""
    from cityscapesscripts.helpers.labels import id2label

    rng = np.random.RandomState(seed)
    city = "testcity"
    img_dir = os.path.join(root, "leftImg8bit", "val", city)
    gt_dir = os.path.join(root, "gtFine", "val")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(gt_dir, city), exist_ok=True)
    dicts = []
    for i in range(n_images):
        stem = f"{city}_000000_{i:06d}"
        label = np.full((h, w), 7, dtype=np.uint8)
        inst = label.astype(np.int32)  # stuff pixels hold their label id
        for j in range(6):  # random rectangles of random labels
            lid = LABEL_IDS[rng.randint(len(LABEL_IDS))]
            y0, x0 = rng.randint(0, h - 2), rng.randint(0, w - 2)
            y1, x1 = y0 + rng.randint(2, h // 2), x0 + rng.randint(2, w // 2)
            label[y0:y1, x0:x1] = lid
            inst[y0:y1, x0:x1] = lid * 1000 + j if lid in INSTANCE_IDS else lid
        train = np.vectorize(lambda v: id2label[int(v)].trainId)(label).astype(np.uint8)
        img = rng.randint(0, 255, size=(h, w, 3), dtype=np.uint8)
        file_name = os.path.join(img_dir, stem + "_leftImg8bit.png")
        Image.fromarray(img).save(file_name)
        base = os.path.join(gt_dir, city, stem + "_gtFine_")
        Image.fromarray(label).save(base + "labelIds.png")
        Image.fromarray(train).save(base + "labelTrainIds.png")
        Image.fromarray(inst.astype(np.uint16)).save(base + "instanceIds.png")
        dicts.append({"file_name": file_name, "sem_seg_file_name": base + "labelTrainIds.png",
                      "image_id": stem, "height": h, "width": w})
    return dicts, gt_dir
