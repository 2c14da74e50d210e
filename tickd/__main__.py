"""`python -m tickd`: run the store (configured by the environment) until SIGTERM."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402  (after patching, as gevent requires)
import sys  # noqa: E402

from tickd.app import run  # noqa: E402

sys.exit(run(os.environ, sys.stdout))
