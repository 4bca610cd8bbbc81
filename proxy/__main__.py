"""``python -m proxy`` runs the ``stillroom`` command."""

from proxy.cli import main

main()
