"""Prefect flows composing the tasks.

Importing any flow turns Prefect's server analytics off unless the environment says otherwise: the
project runs offline, where each attempt to send telemetry only fails and logs an error.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
