"""``python -m mgs_tools.forgetting``: the ``mgs-forgetting`` command line."""

from mgs_tools.forgetting.cli import main

main()
