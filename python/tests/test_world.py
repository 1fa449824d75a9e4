"""demo/world.py: renders at any size; the 64-px renders of every seed stay what they were."""
import hashlib
import os
import sys
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "demo")]
import world  # noqa: E402

# sha256 of the pictures and masks of seeds 2_000_000.. 2_000_039 and 3_000_000.. 3_000_019, computed
# with world.py as it was before it took a size (commit a3067aa; checked bit for bit on 450 seeds).
PINNED = "accfc6c86e60eb04e98bea3538dbbbc034ea0f74419cd00568f3e6cebf1d66dc"


class Sizes(unittest.TestCase):
    def test_64_px_is_unchanged(self):
        h = hashlib.sha256()
        for s in list(range(2_000_000, 2_000_040)) + list(range(3_000_000, 3_000_020)):
            p = world.make_edit_pair(s, kind="colour" if s % 2 == 0 else "shape")
            for a in (p.source.image, p.target.image, p.mask):
                h.update(a.tobytes())
        self.assertEqual(h.hexdigest(), PINNED)
        self.assertTrue(np.array_equal(world.make_edit_pair(5, size=64).source.image, world.make_edit_pair(5).source.image))

    def test_larger_renders_are_the_same_scene(self):
        for seed in (2_000_000, 2_000_001, 2_000_004):  # gradient, striped and noisy backgrounds
            small = world.make_edit_pair(seed)
            for size in (256, 1024):
                big = world.make_edit_pair(seed, size=size)
                f = size // 64
                self.assertEqual(big.source.image.shape, (size, size, 3))
                self.assertEqual(big.mask.shape, (size, size))
                self.assertEqual((big.source_caption, big.target_caption), (small.source_caption, small.target_caption))
                # The mask, area-averaged back to 64 px, is the 64-px mask but for edge pixels.
                down = big.mask.reshape(64, f, 64, f).mean((1, 3)) >= 0.5
                self.assertGreater((down == small.mask).mean(), 0.99)
                # So are the pictures, outside the stripes' edges (sampled at 64 px, drawn at size).
                pic = big.source.image.reshape(64, f, 64, f, 3).astype(float).mean((1, 3))
                self.assertLess(np.median(np.abs(pic - small.source.image)), 2.0)

    def test_bad_size(self):
        for bad in (0, -4, 2.5):
            with self.assertRaises(ValueError):
                world.make_scene(1, size=bad)


if __name__ == "__main__":
    unittest.main()
