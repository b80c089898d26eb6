"""The shipped model's experiment (checkpoints/default/experiment.json): the sets tests check pages and core on."""

from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.data import EXPERIMENT_NAME, load_experiment

EXPERIMENT = load_experiment(DEFAULT_RUN_DIR / EXPERIMENT_NAME)
ID_SET = EXPERIMENT.id_set.spec  # demo:fashion_mnist_test
OOD_SETS = EXPERIMENT.groups  # spec -> "far" | "near", far sets first
