"""Find the Mosquitto executable to run."""

from __future__ import annotations

import os
import shutil

from fieldhub.broker.errors import MosquittoNotFound

# Where Debian/Ubuntu (/usr/sbin) and source builds (/usr/local/sbin) put the
# broker. Neither is on a normal user's PATH, so PATH alone finds nothing.
MOSQUITTO_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto(explicit: str | None = None) -> str:
    """Return the path of the Mosquitto executable to run.

    `explicit` (a path, or a name looked up on PATH) wins and is the only place
    looked at when given: silently running another binary than the one asked
    for would be worse than failing. Otherwise PATH, then the Debian and
    source-install locations, which are not on a normal user's PATH.
    """
    if explicit is not None:
        found = shutil.which(explicit)
        if found is None:
            raise MosquittoNotFound(searched=(explicit,))
        return found
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    for candidate in MOSQUITTO_FALLBACK_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoNotFound(searched=("PATH", *MOSQUITTO_FALLBACK_PATHS))
