"""What knows the outside: SPECs, checkpoints, run folders, datasets, recipes, files."""
