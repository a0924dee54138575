"""What the fork server of training/launch.py imports before it forks any run (its preload): a run
forked from it starts with these imported. Imported by that server only: it first blocks the signals
that would end the server under its runs (launch.SERVER_BLOCKS; each run unblocks them)."""

import signal

from training.launch import SERVER_BLOCKS, run_train_simple  # noqa: F401  (each run's entry point)

signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_BLOCKS)

import torch._dynamo  # noqa: E402, F401  (AdamW's first param group imports it)
from transformers import AutoTokenizer  # noqa: E402, F401  (each run loads its tokenizer)

import train_simple  # noqa: E402, F401
