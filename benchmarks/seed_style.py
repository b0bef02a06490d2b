"""The seeds' training loop (seed 002's train.py), the baseline that `cnnscope train` is timed against.

The textbook way: a torch Dataset that runs albumentations on one HWC uint8 image at a time and
normalises it to a float32 CHW tensor inside DataLoader worker processes (2, the seed's default),
NCHW tensors, a `.item()` per batch for the running loss and accuracy, and a full test-set
evaluation after every epoch. The model (zoo.build), the recipe (cnnscope.runs.recipes: SGD nesterov,
OneCycle stepped per batch, the augmentation with its translation range fixed) and the data
(cnnscope.runs.datasets.load_dataset, no validation split: the seed trained on the whole training set and
evaluated on the test set) are the ones cnnscope uses, so only the loop differs.

Prints one JSON object per epoch on stdout, e.g.
  {"loop": "seed_style", "epoch": 1, "epochs": 5, "train_s": 301.2, "eval_s": 12.0, "epoch_time_s": 313.2,
   "images_per_s": 199.2, "train_loss": 0.71, "train_acc": 74.1, "test_loss": 0.45, "test_acc": 83.5}

    python benchmarks/seed_style.py --model basic --dataset fashion-mnist --epochs 5
"""
import argparse
import dataclasses
import json
import time

import torch
import torch.nn as nn

from cnnscope import zoo
from cnnscope.core.augment import AugmentSpec
from cnnscope.runs import datasets, recipes
from cnnscope.runs.loaders import AlbumentationsDataset, subset


class SeedDataset(torch.utils.data.Dataset):
    """Per sample, in a worker: the seeds' albumentations pipeline, then normalisation -> float32 CHW."""

    def __init__(self, split, augment, mean, std):
        self.augmented = AlbumentationsDataset(split, augment, mean)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.augmented)

    def __getitem__(self, i):
        image, label = self.augmented[i]
        return (image.float() / 255 - self.mean) / self.std, label


def seed_worker(worker_id):
    """Each worker draws its own augmentations (torch gives it base seed + worker id)."""
    torch.utils.data.get_worker_info().dataset.augmented.seed(torch.initial_seed() % 2**62)


def make_loader(split, ds, augment, batch_size, workers, shuffle, device):
    return torch.utils.data.DataLoader(
        SeedDataset(split, augment, ds.mean, ds.std), batch_size=batch_size, shuffle=shuffle,
        num_workers=workers, worker_init_fn=seed_worker if workers else None, pin_memory=device.type == "cuda",
    )


def evaluate(model, loader, device):
    """Test loss and accuracy (percent), the seed's way: no_grad, one .item() per batch."""
    model.eval()
    loss_sum = correct = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    return loss_sum / len(loader.dataset), 100.0 * correct / len(loader.dataset)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="basic")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=None, help="[default: the recipe's]")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the recipe's]")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int, default=0, metavar="N",
                        help="Train on the random N-image subset `cnnscope train --train-subset N` takes.")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)

    recipe = recipes.resolve(recipes.get_recipe(args.model),
                             {"epochs": args.epochs, "batch_size": args.batch_size, "dataset": args.dataset})
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    ds = datasets.load_dataset(recipe.dataset, args.data_dir, val_split=0, seed=args.seed)
    if args.train_subset:
        ds = dataclasses.replace(ds, train=subset(ds.train, args.train_subset, args.seed))
    train_loader = make_loader(ds.train, ds, recipe.augment, recipe.batch_size, args.workers, True, device)
    test_loader = make_loader(ds.test, ds, AugmentSpec(), recipe.batch_size, args.workers, False, device)

    model = zoo.build(args.model, num_classes=len(ds.classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=len(train_loader),
        pct_start=recipe.pct_start, div_factor=recipe.div_factor, final_div_factor=recipe.final_div_factor)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    for epoch in range(1, recipe.epochs + 1):
        model.train()
        started = time.perf_counter()
        loss_sum = correct = seen = 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            out = model(x)
            loss = criterion(out, y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
        train_s = time.perf_counter() - started
        test_loss, test_acc = evaluate(model, test_loader, device)
        epoch_s = time.perf_counter() - started
        print(json.dumps({
            "loop": "seed_style", "epoch": epoch, "epochs": recipe.epochs, "train_s": round(train_s, 3),
            "eval_s": round(epoch_s - train_s, 3), "epoch_time_s": round(epoch_s, 3),
            "images_per_s": round(seen / train_s, 2), "train_loss": round(loss_sum / seen, 6),
            "train_acc": round(100.0 * correct / seen, 4), "test_loss": round(test_loss, 6),
            "test_acc": round(test_acc, 4),
        }), flush=True)


if __name__ == "__main__":
    main()
