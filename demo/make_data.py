"""Render the training set: N scenes from seeds 0..N-1 (eval uses seeds >= 1_000_000).

    python demo/make_data.py OUT.npz N
"""
import json
import sys

import numpy as np

import world

out, n = sys.argv[1], int(sys.argv[2])
images = np.zeros((n, world.SIZE, world.SIZE, 3), np.uint8)
captions = []
for i in range(n):
    s = world.make_scene(i)
    images[i] = s.image
    captions.append(s.captions())
np.savez(out, images=images, captions=np.array(json.dumps(captions)))
print("wrote", out, images.shape)
