"""A stand-in for the Keygen API (keygen.sh), for tests and the demo.

An in-memory Keygen speaking the slice of the API the portal uses, as keygen-sh/keygen-api
behaves: the order of checks, error shapes and codes, key casing, API versions 1.0-1.8 and rate
limits; with fault injection per route and a control plane under /_emulator/. It must never
import the portal's Keygen client (keygen_api): it is here to catch that client's bugs.

    python -m keygen_emulator --port 8001 [--slug shop] [--protected] ...
    flask --app keygen_emulator run --port 8001      (seeded from EMULATOR_* variables)

Modules: state (the records, Emulator, seeding), pipeline (one request's order of checks),
routes (the endpoints, who may see what), schema (request-body checks), documents (JSON:API
answers), errors (error objects), formats (key casing, ids, keys, credentials), faults (fault
injection, rate limits, dropped connections), deployment (the switches for the Keygens a vendor
runs: edition, API versions, hosts and domains, environments, permissions, account states,
races, delayed deletions; Keygen Cloud's by default), wsgi (create_app, the control plane),
server (serve(), the command line).
"""

from keygen_emulator.seeds import seed_contract
from keygen_emulator.server import ServerThread, main, serve
from keygen_emulator.state import Emulator
from keygen_emulator.wsgi import create_app

__all__ = ["Emulator", "ServerThread", "create_app", "main", "seed_contract", "serve"]
