"""``python -m mgs_tools.diagnose``: the ``mgs-diagnose`` command line."""

from mgs_tools.diagnose.cli import main

main()
