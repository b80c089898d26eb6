"""Image data sources: parse a dataset spec string and open it as a sequence of RGB images.

Spec strings (``str(parse_dataset(text))`` is the canonical form)::

    fashion_mnist:train | fashion_mnist:test   Debian dataset-fashion-mnist files (or --data-root)
    digits                                     scikit-learn digits, 8x8 upscaled to 28x28 like MNIST
    letters                                    notMNIST-style letters A-J rendered from DejaVu fonts
    textures                                   crops of scikit-image's bundled public-domain photos
    demo:<name>                                assets/demo/<name>.npz (see list_demo_sets())
    torchvision:<Class>[:<split>]              any torchvision.datasets class, e.g. torchvision:CIFAR10:test
    folder:<path>                              every image file below <path>, recursively

Any spec may end in shift modifiers for near-OOD experiments, applied left to right:
``+invert``, ``+rot90``, ``+rot180``, ``+rot270``, ``+hflip``, ``+vflip``, ``+blur``, ``+contrast``
(e.g. ``fashion_mnist:test+invert``).

Every source yields ``PIL.Image.Image`` objects in mode ``"RGB"``; a folder item whose file cannot be
decoded yields ``None`` so the feature extractor can count it as skipped instead of aborting a long run.
Generated sources (digits, letters, textures) are light-on-dark 28x28 grayscale images (stored as RGB)
so that, like the Fashion-MNIST in-distribution data, they differ by content rather than by format.

Layout: ``spec`` parses spec strings, ``registry`` opens them (one opener per source), one module per source
(``fashion_mnist``, ``digits``, ``letters``, ``textures``, ``demo``, ``torchvision_sets``, ``folder``), ``shifts``
for the modifiers, ``images`` for decoding and its limits, ``dataset`` for the :class:`ImageDataset` type.
Experiments (what a model is studied on): ``experiment`` (the file format), ``experiment_defaults`` (default
evaluation sets, display names, the training/evaluation overlap check, a run's experiment); uploaded sets:
``user_data`` (the user data folder) over ``archive`` (safe ZIP reading).
"""

from dlsr_core.data.dataset import (
    GENERATED_SIZE,
    DatasetError,
    ImageDataset,
    describe_skipped,
    item_name,
)
from dlsr_core.data.demo import DEMO_DIR, list_demo_sets
from dlsr_core.data.digits import digits_images
from dlsr_core.data.experiment import (
    EXPERIMENT_NAME,
    GROUPS,
    Experiment,
    ExperimentError,
    NamedSet,
    OODSet,
    load_experiment,
    save_experiment,
)
from dlsr_core.data.experiment_defaults import (
    RunExperiment,
    default_id_set,
    default_name,
    edits_path,
    overlap_warning,
    run_experiment,
)
from dlsr_core.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist, read_idx
from dlsr_core.data.folder import IMAGE_EXTENSIONS
from dlsr_core.data.images import MAX_DECODED_SIDE, MAX_IMAGE_PIXELS, ImageLoadError, load_image
from dlsr_core.data.letters import LETTER_FONTS, LETTERS, LETTERS_LENGTH, letter_fonts, render_letter
from dlsr_core.data.registry import builtin_sets, open_dataset
from dlsr_core.data.shifts import SHIFTS
from dlsr_core.data.spec import DatasetSpec, parse_dataset
from dlsr_core.data.textures import TEXTURE_IMAGES, TEXTURES_LENGTH, render_texture
from dlsr_core.data.torchvision_sets import TORCHVISION_ROOT
from dlsr_core.data.user_data import StoredSet, UploadError, remove_stored_set, store_uploaded_set, user_data_dir

__all__ = [
    "EXPERIMENT_NAME",
    "GENERATED_SIZE",
    "GROUPS",
    "LETTER_FONTS",
    "LETTERS_LENGTH",
    "TEXTURES_LENGTH",
    "TORCHVISION_ROOT",
    "DEMO_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "LETTERS",
    "MAX_DECODED_SIDE",
    "MAX_IMAGE_PIXELS",
    "SHIFTS",
    "TEXTURE_IMAGES",
    "DatasetError",
    "DatasetSpec",
    "Experiment",
    "ExperimentError",
    "ImageDataset",
    "ImageLoadError",
    "NamedSet",
    "OODSet",
    "RunExperiment",
    "StoredSet",
    "UploadError",
    "builtin_sets",
    "default_id_set",
    "default_name",
    "describe_skipped",
    "digits_images",
    "edits_path",
    "item_name",
    "letter_fonts",
    "list_demo_sets",
    "load_fashion_mnist",
    "load_experiment",
    "load_image",
    "open_dataset",
    "overlap_warning",
    "parse_dataset",
    "read_idx",
    "remove_stored_set",
    "render_letter",
    "render_texture",
    "run_experiment",
    "save_experiment",
    "store_uploaded_set",
    "user_data_dir",
]
