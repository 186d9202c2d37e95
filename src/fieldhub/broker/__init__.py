"""The embedded Mosquitto broker.

`access` renders the password and ACL files from a `BrokerAccess` (`passwd`
makes Mosquitto's `$7$` hashes, `legacy` holds the earlier stacks' policies);
`config` renders mosquitto.conf; `process` spawns and stops one Mosquitto
(`executable` finds it, `privileges` decides who it runs as, `parent_death`
ties its life to ours, `log` and `child_exit` serve it); `supervisor` keeps it
running in the application; `blocking` drives one from synchronous code.
"""

from fieldhub.broker.access import (
    BrokerAccess,
    DeviceCredential,
    InternalClient,
    LegacyLogin,
    Role,
)
from fieldhub.broker.blocking import MosquittoProcess
from fieldhub.broker.config import LegacyListener, TlsListener, render_mosquitto_conf
from fieldhub.broker.errors import BrokerError, BrokerStartError, MosquittoNotFound
from fieldhub.broker.executable import find_mosquitto
from fieldhub.broker.legacy import LEGACY_POLICIES, LegacyPolicy
from fieldhub.broker.passwd import check_password, hash_password
from fieldhub.broker.process import BrokerProcess
from fieldhub.broker.supervisor import BrokerSupervisor

__all__ = [
    "LEGACY_POLICIES",
    "BrokerAccess",
    "BrokerError",
    "BrokerProcess",
    "BrokerStartError",
    "BrokerSupervisor",
    "DeviceCredential",
    "InternalClient",
    "LegacyListener",
    "LegacyLogin",
    "LegacyPolicy",
    "MosquittoNotFound",
    "MosquittoProcess",
    "Role",
    "TlsListener",
    "check_password",
    "find_mosquitto",
    "hash_password",
    "render_mosquitto_conf",
]
