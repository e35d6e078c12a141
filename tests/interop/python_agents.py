#!/usr/bin/env python3
"""Drive N real `opentelemetry-opamp-client` (PyPI) agents against an OpAMP server.

Usage:
    python3 tests/interop/python_agents.py --endpoint http://127.0.0.1:4320/v1/opamp \
        --agents 3 --poll-seconds 1 --label env=test --service-name interop-py

Each agent is an independent OpAMPClient + OpAMPAgent pair with its own
instance uid (a UUIDv7 made by the library's own generator). It describes
itself like a collector (service.name, service.version, service.instance.id
identifying; host.name, os.type and the --label pairs non-identifying), and
accepts remote config: on every received AgentRemoteConfig it reports
RemoteConfigStatus APPLIED with the received config_hash and reports the
received config map, byte for byte, as its effective config.

stdout carries one JSON object per line (flushed):
    {"event":"started","instance_uids":[...],"connected":K}
    {"event":"remote_config","instance_uid":"...","hash":"<hex>"}
    {"event":"stopped"}
Everything else (library warnings, errors) goes to stderr.

It runs until stdin reaches EOF (unless --no-stdin) or SIGTERM/SIGINT, then
stops every agent (the library sends an AgentToServer with agent_disconnect)
and exits 0.

What the library cannot do (so this script does not do it either): report
health (no ComponentHealth support), WebSocket transport, honour an offered
heartbeat interval, or adopt agent_identification.new_instance_uid.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
import uuid

from opentelemetry._opamp._uuid import uuid7
from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import OpAMPCallbacks
from opentelemetry._opamp.client import OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2

_caps = opamp_pb2.AgentCapabilities
# The library's default set, spelled out. It has no health support, so
# ReportsHealth is deliberately not claimed.
CAPABILITIES = (
    _caps.AgentCapabilities_ReportsStatus
    | _caps.AgentCapabilities_AcceptsRemoteConfig
    | _caps.AgentCapabilities_ReportsEffectiveConfig
    | _caps.AgentCapabilities_ReportsRemoteConfig
    | _caps.AgentCapabilities_ReportsHeartbeat
)

_out_lock = threading.Lock()
_log = logging.getLogger("python_agents")


def emit(obj: dict) -> None:
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label must be KEY=VALUE, got {text!r}")
    return key, value


class Callbacks(OpAMPCallbacks):
    def __init__(self, uid: uuid.UUID):
        self.uid = uid
        self.connected = threading.Event()

    def on_connect(self, agent, client):
        self.connected.set()

    def on_connect_failed(self, agent, client, error):
        _log.warning("agent %s: send failed: %s", self.uid, error)

    def on_error(self, agent, client, error_response):
        _log.warning(
            "agent %s: server error_response type=%s message=%r",
            self.uid,
            error_response.type,
            error_response.error_message,
        )

    def on_message(self, agent, client, message):
        remote_config = message.remote_config
        if remote_config is None:
            return
        config_hash = bytes(remote_config.config_hash)
        emit(
            {
                "event": "remote_config",
                "instance_uid": str(self.uid),
                "hash": config_hash.hex(),
            }
        )
        # Effective config := the received config map, verbatim (the
        # library's update_effective_config() only takes one content type for
        # all files and re-serialises JSON, so fill the message it returns,
        # which is the one the client stores and sends, ourselves).
        effective = client.update_effective_config({}, content_type="")
        effective.config_map.CopyFrom(remote_config.config)
        status = client.update_remote_config_status(
            remote_config_hash=config_hash,
            status=opamp_pb2.RemoteConfigStatuses.RemoteConfigStatuses_APPLIED,
        )
        if status is None:
            # Same hash and status as already reported: nothing new to say.
            return
        # Full state carries description, remote_config_status and
        # effective_config together.
        agent.send(client.build_full_state_message())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="e.g. http://127.0.0.1:4320/v1/opamp")
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--poll-seconds", type=float, default=30.0, help="heartbeat/poll interval")
    parser.add_argument("--label", action="append", type=parse_label, default=[], metavar="KEY=VALUE")
    parser.add_argument("--service-name", default="interop-python-agent")
    parser.add_argument("--service-version", default="0.1.0")
    parser.add_argument(
        "--timeout-ms", type=int, default=5000, help="HTTP request timeout (library default is 1000)"
    )
    parser.add_argument(
        "--connect-wait-seconds",
        type=float,
        default=10.0,
        help="how long to wait for every agent's first exchange before printing 'started'",
    )
    parser.add_argument("--no-stdin", action="store_true", help="ignore stdin; stop only on a signal")
    parser.add_argument("--verbose", action="store_true", help="library debug logs to stderr")
    args = parser.parse_args()
    if args.agents < 1:
        parser.error("--agents must be >= 1")
    if args.poll_seconds <= 0:
        parser.error("--poll-seconds must be > 0")

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    stop_event = threading.Event()

    def on_signal(signum, frame):
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    host_name = socket.gethostname()
    os_type = platform.system().lower()
    labels = dict(args.label)

    agents: list[tuple[uuid.UUID, OpAMPAgent, Callbacks]] = []
    for _ in range(args.agents):
        uid = uuid7()
        identifying = {
            "service.name": args.service_name,
            "service.version": args.service_version,
            "service.instance.id": str(uid),
        }
        non_identifying = {"host.name": host_name, "os.type": os_type, **labels}
        client = OpAMPClient(
            endpoint=args.endpoint,
            timeout_millis=args.timeout_ms,
            agent_identifying_attributes=identifying,
            agent_non_identifying_attributes=non_identifying,
            capabilities=CAPABILITIES,
        )
        # The client makes its own uid and offers no way to pass one or read
        # it back; set ours (also a library uuid7) so service.instance.id
        # matches the OpAMP instance uid, as the collector does.
        client._instance_uid = uid.bytes  # pylint: disable=protected-access
        callbacks = Callbacks(uid)
        agent = OpAMPAgent(interval=args.poll_seconds, callbacks=callbacks, client=client)
        agents.append((uid, agent, callbacks))

    for _, agent, _ in agents:
        agent.start()
        # start() registers stop() with atexit; we stop explicitly, and a
        # second stop() at exit would send a second agent_disconnect.
        atexit.unregister(agent.stop)

    deadline = time.monotonic() + args.connect_wait_seconds
    for uid, _, callbacks in agents:
        if not callbacks.connected.wait(max(0.0, deadline - time.monotonic())):
            _log.warning("agent %s: no successful exchange within %.1fs", uid, args.connect_wait_seconds)
    connected = sum(1 for _, _, cb in agents if cb.connected.is_set())
    emit(
        {
            "event": "started",
            "instance_uids": [str(uid) for uid, _, _ in agents],
            "connected": connected,
        }
    )

    if not args.no_stdin:

        def watch_stdin():
            # os.read on the raw fd: a thread blocked in sys.stdin's buffered
            # reader holds its lock and aborts interpreter shutdown.
            try:
                while os.read(0, 65536):
                    pass
            except OSError as exc:
                _log.debug("stdin closed: %s", exc)
            stop_event.set()

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    while not stop_event.wait(0.5):
        pass

    # Stop all agents in parallel: each stop() sends agent_disconnect, then
    # joins the worker thread (which polls its queue once a second).
    stoppers = [
        threading.Thread(target=agent.stop, kwargs={"timeout": 10}, name=f"stop-{uid}")
        for uid, agent, _ in agents
    ]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    emit({"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
