"""Command-line flags shared by the classification-tool tests (a module of its own: every test folder has a
conftest.py, so `from conftest import ...` would pick whichever was imported first)."""

DIGITS_ARGS = ["--train-dataset", "Digits:split=TRAIN", "--val-dataset", "Digits:split=VAL"]
SMALL_IMAGES = ["--resize-size", "32", "--crop-size", "32", "--num-workers", "0", "--autocast-dtype", "config"]
