#!/usr/bin/env python3
"""What a client sees while tansu shuts down after SIGTERM.

    sigterm_probe.py --broker 127.0.0.1:19092 --broker-pid PID [--watch-s 10]

Creates a topic, keeps one idempotent producer connected, sends SIGTERM to the broker (one
we started ourselves) and then, every half second for WATCH_S seconds, says whether the port
still accepts TCP connections and what a produce through the connected producer gets.
"""

import argparse
import json
import os
import signal
import socket
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def accepts(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", default="127.0.0.1:19092")
    p.add_argument("--broker-pid", type=int, required=True)
    p.add_argument("--watch-s", type=float, default=10)
    a = p.parse_args()
    host, port = a.broker.rsplit(":", 1)
    topic = f"term.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": a.broker})
    admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=10)[topic].result(20)
    errors = []
    pr = Producer({"bootstrap.servers": a.broker, "enable.idempotence": True, "acks": "all",
                   "message.timeout.ms": 2000,
                   "error_cb": lambda e: errors.append(e.name())})
    outcome = {}

    def report(err, _msg):
        outcome["r"] = err.name() if err else "ok"

    pr.produce(topic, b"before")
    pr.flush(10)
    t0 = time.time()
    os.kill(a.broker_pid, signal.SIGTERM)
    while time.time() - t0 < min(a.watch_s, 60):
        outcome.clear()
        pr.produce(topic, b"during", on_delivery=report)
        pr.flush(2.5)
        alive = True
        try:
            os.kill(a.broker_pid, 0)
        except ProcessLookupError:
            alive = False
        print(json.dumps({"after_sigterm_s": round(time.time() - t0, 1),
                          "process_alive": alive, "port_accepts": accepts(host, int(port)),
                          "produce": outcome.get("r", "no report"),
                          "client_errors": sorted(set(errors))}), flush=True)
        errors.clear()
        time.sleep(0.5)


if __name__ == "__main__":
    main()
