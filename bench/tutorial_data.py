"""Baseline: the tutorial's chapter 1 scripts, as it describes them, for side-by-side timing.

1_1 unpickles test_batch (plain pickle.load, encoding="bytes": this is the *tutorial's*
method, run only on an archive this benchmark built itself), and writes each image with a
per-image save into raw_test/<label>/<label>_<i>.png; 1_2 walks that tree and shutil.copy's
each class 8:1:1 into train/valid/test; 1_3 walks the split folders and writes
`path label` lines; 1_5 samples 2,000 training images at random and grows one array with
np.concatenate image by image (quadratic), then takes mean and std per channel.
The tutorial used cv2 and scipy for image I/O; PIL stands in (same per-image work).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import sys
import tarfile
import time

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def unpickle(file):
    with open(file, "rb") as fo:
        return pickle.load(fo, encoding="bytes")  # the tutorial's loader; our own archive only


def step_unpack(archive, work):
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    d = unpickle(os.path.join(work, "cifar-10-batches-py", "test_batch"))
    for i in range(10000):
        img = np.reshape(d[b"data"][i], (3, 32, 32)).transpose(1, 2, 0)
        label_num = str(d[b"labels"][i])
        o_dir = os.path.join(work, "raw_test", label_num)
        os.makedirs(o_dir, exist_ok=True)
        Image.fromarray(img).save(os.path.join(o_dir, label_num + "_" + str(i) + ".png"))


def step_split(work):
    random.seed(1)
    raw = os.path.join(work, "raw_test")
    for root, dirs, _ in os.walk(raw):
        for sub in dirs:
            imgs = os.listdir(os.path.join(root, sub))
            imgs = [x for x in imgs if x.endswith(".png")]
            random.shuffle(imgs)
            n = len(imgs)
            train_point, valid_point = int(n * 0.8), int(n * 0.9)
            for i in range(n):
                which = "train" if i < train_point else "valid" if i < valid_point else "test"
                out_dir = os.path.join(work, which, sub)
                os.makedirs(out_dir, exist_ok=True)
                shutil.copy(os.path.join(raw, sub, imgs[i]), os.path.join(out_dir, imgs[i]))


def step_txt(work):
    for which in ("train", "valid", "test"):
        with open(os.path.join(work, which + ".txt"), "w") as f:
            for root, dirs, _ in os.walk(os.path.join(work, which)):
                for sub in dirs:
                    for name in os.listdir(os.path.join(root, sub)):
                        if name.endswith(".png"):
                            f.write(os.path.join(root, sub, name) + " " + sub + "\n")


def step_mean_std(work, samples=2000):
    with open(os.path.join(work, "train.txt")) as f:
        lines = f.readlines()
    random.shuffle(lines)
    imgs = np.zeros([32, 32, 3, 1])
    for i in range(samples):
        img = np.asarray(Image.open(lines[i].rstrip().split()[0]).resize((32, 32)))[:, :, :, np.newaxis]
        imgs = np.concatenate((imgs, img), axis=3)
    imgs = imgs.astype(np.float32) / 255.0
    means = [float(np.mean(imgs[:, :, i, :].ravel())) for i in range(3)]
    stdevs = [float(np.std(imgs[:, :, i, :].ravel())) for i in range(3)]
    return means, stdevs


def main(archive, work):
    times = {}
    for name, fn in (
        ("unpack", lambda: step_unpack(archive, work)),
        ("split", lambda: step_split(work)),
        ("index", lambda: step_txt(work)),
        ("stats", lambda: step_mean_std(work)),
    ):
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
    print(" ".join(f"{k}={v:.3f}" for k, v in times.items()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
