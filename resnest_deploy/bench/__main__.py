"""``python -m resnest_deploy.bench JOB``: one provider's cells, timed in a process of its own."""

import sys

from resnest_deploy.bench.providers import worker

sys.exit(worker(sys.argv[1:]))
