"""``python -m resnest_deploy.cli``: the same as the ``resnest-deploy`` command."""

from resnest_deploy.cli.app import main

main()
