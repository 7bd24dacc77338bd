"""The Python client of Falra.

    from falra import Client
    client = Client()                      # FALRA_URL, FALRA_TOKEN
    client.call("utils.add", a=1, b=2)     # 3

See the README beside this package for jobs, uploads, errors and retries.
"""

from ._client import Answer, AsyncClient, Client, Job
from ._errors import *  # noqa: F401,F403 (one class per error code)
from ._errors import BY_CODE, ConnectionFailed, FalraError

__all__ = ["Answer", "AsyncClient", "Client", "Job", "FalraError", "ConnectionFailed", "BY_CODE"] + [
    cls.__name__ for cls in BY_CODE.values()
]
__version__ = "0.1.0"
