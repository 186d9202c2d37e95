"""The embedded Mosquitto broker: config rendering and process supervision."""

from fieldhub.broker.config import render_mosquitto_conf
from fieldhub.broker.supervisor import (
    BrokerError,
    BrokerStartError,
    BrokerSupervisor,
    MosquittoNotFound,
    MosquittoProcess,
    find_mosquitto,
)

__all__ = [
    "BrokerError",
    "BrokerStartError",
    "BrokerSupervisor",
    "MosquittoNotFound",
    "MosquittoProcess",
    "find_mosquitto",
    "render_mosquitto_conf",
]
