"""`python -m trainers.train`: train one model from the command line (see
trainers/_train_cli.py)."""

import sys

from trainers._train_cli import main

sys.exit(main())
