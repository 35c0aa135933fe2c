"""Small utilities shared by the library.

- `arguments`: the checks of public arguments (positive ints, numbers in a
  range, flags, choices, seeds), with one wording for every refusal.
- `images`: image grids and atomic PNG writes (`save_image_grid`,
  `write_png`).
"""

from keras_immiscible.utils import arguments
from keras_immiscible.utils import images
