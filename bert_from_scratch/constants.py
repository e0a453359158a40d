"""The project's shared constants, in one place.

Numbers the model, the data pipeline and the losses must agree on, and the names of the files a
checkpoint or a run folder holds (Hugging Face's names where a Hugging Face file exists).
"""
from .kernels.kernel_args import MASK_VALUE  # noqa: F401  (-10000.0, added to padded keys' scores)

#: label of a position or example that has no target (Hugging Face and torch's convention)
IGNORE_INDEX = -100

# ---- a model folder (what ``save_pretrained`` writes and Hugging Face reads) ------------------
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.txt"

# ---- a run folder ----------------------------------------------------------------------------
CHECKPOINT_DIR = "checkpoint"              # pretraining: the latest checkpoint (model + optimizer + state)
BEST_DIR = "best"                          # fine-tuning: the best model on dev
OPTIMIZER_NAME = "optimizer.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.json"
RESULTS_NAME = "results.json"
CURVE_NAME = "training_curve.png"
CONFUSION_MATRIX_NAME = "confusion_matrix.png"
