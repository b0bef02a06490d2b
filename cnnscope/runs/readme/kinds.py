"""The block kinds of a README and the arguments each takes; the seed README's per-run names."""

# Images a run folder holds under plots/: kind -> (file, default title, command that writes it).
RUN_IMAGES = {
    "CM": ("cm.png", "Confusion matrix", "cnnscope evaluate {run}"),
    "TEST_SAMPLES_GRID": ("test_samples_grid.png", "Test samples", "cnnscope evaluate {run}"),
    "MISCLASSIFIED_GRID": ("misclassified_grid.png", "Misclassified test samples", "cnnscope evaluate {run}"),
    "AUGMENTED_SAMPLES_GRID": ("augmented_samples_grid.png", "Augmented training samples",
                               "cnnscope augment {run}"),
    "GATE_MAPS": ("gate_maps.png", "Entropy-gate dilation maps", "cnnscope gates {run}"),
    "GATE_SHARES": ("gate_shares.png", "Dilation share per stage and step", "cnnscope gates {run}"),
    "ATTRIBUTIONS": ("attributions.png", "Attributions", "cnnscope attribute {run}"),
    "ERF": ("erf.png", "Effective receptive field", "cnnscope rf MODEL --erf {run}"),
}
CURVES = {"acc": ("acc_curves.png", "Accuracy"), "loss": ("loss_curves.png", "Loss"),
          "lr": ("lr.png", "Learning rate")}
COMBINED_PLOTS = {"COMBINED_ACC_PLOT": ("combined_acc.png", "Accuracy, all runs"),
                  "COMBINED_LOSS_PLOT": ("combined_loss.png", "Loss, all runs")}
IMAGE_ARGS = ("title", "width")

# kind -> the arguments its opening marker accepts
KINDS = {
    "ZOO_TABLE": ("models",),
    "MODEL_SUMMARY": ("spec", "ctor", "input", "run", "title"),
    "RF": ("spec", "ctor", "input", "run", "title"),
    "RUN_METRICS": ("run",),
    "CLS_REPORT": ("run",),
    "CURVES": ("run", "kind", *IMAGE_ARGS),
    "SHARING": ("run", "bank", *IMAGE_ARGS),
    "COMBINED_SUMMARY_TABLE": ("runs", "combined"),
    "IMAGE": ("src", *IMAGE_ARGS),
    **{kind: ("run", *IMAGE_ARGS) for kind in RUN_IMAGES},
    **{kind: ("combined", *IMAGE_ARGS) for kind in COMBINED_PLOTS},
}
# The seed's per-run names: <PREFIX>_<X> is the kind <PREFIX> for the run of X.
SEED_PREFIXES = ("MODEL_SUMMARY", "CLS_REPORT", "CM", "RF")


def is_known(name: str) -> bool:
    """A block kind, or a seed name <PREFIX>_<X>."""
    return name in KINDS or any(name.startswith(p + "_") and len(name) > len(p) + 1 for p in SEED_PREFIXES)
