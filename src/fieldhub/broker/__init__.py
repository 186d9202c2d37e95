"""The embedded Mosquitto broker.

`config` renders mosquitto.conf; `process` spawns and stops one Mosquitto
(`executable` finds it, `privileges` decides who it runs as, `parent_death`
ties its life to ours, `log` and `child_exit` serve it); `supervisor` keeps it
running in the application; `blocking` drives one from synchronous code.
"""

from fieldhub.broker.blocking import MosquittoProcess
from fieldhub.broker.config import render_mosquitto_conf
from fieldhub.broker.errors import BrokerError, BrokerStartError, MosquittoNotFound
from fieldhub.broker.executable import find_mosquitto
from fieldhub.broker.process import BrokerProcess
from fieldhub.broker.supervisor import BrokerSupervisor

__all__ = [
    "BrokerError",
    "BrokerProcess",
    "BrokerStartError",
    "BrokerSupervisor",
    "MosquittoNotFound",
    "MosquittoProcess",
    "find_mosquitto",
    "render_mosquitto_conf",
]
