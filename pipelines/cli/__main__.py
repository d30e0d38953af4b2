"""`python -m pipelines.cli ...` (as torchrun runs `wit train`): the same as the `wit` command."""
import sys

from pipelines.cli import main

sys.exit(main())
