#!/usr/bin/env python3
"""The smallest reproduction of "the group is revoked and never reassigned".

A broker that stops answering for longer than session.timeout.ms is what sustained load does
to tansu's sqlite engine; here the stall is made on purpose with SIGSTOP/SIGCONT of the
broker process (one we started ourselves), so it needs no load and takes a minute.

    coordinator_stall.py --broker 127.0.0.1:19092 --broker-pid PID
                         [--members 1] [--stall-s 8] [--observe-s 45]
                         [--session-timeout-ms 6000] [--heartbeat-ms 1000]
                         [--static] [--assignor range|cooperative-sticky] [--group G]

Steps: create a topic of three partitions; start MEMBERS consumers in one group and wait
(at most 30 s) until the three partitions are owned; stop the broker for STALL_S seconds;
resume it; watch for OBSERVE_S seconds. Prints each member's assignment events relative to
the resume, and at the end how many partitions the group owns. Against Kafka the group owns
all three again within a few seconds. Exits 0 if it does, 1 if not.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", default="127.0.0.1:19092")
    p.add_argument("--broker-pid", type=int, required=True)
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--stall-s", type=float, default=8)
    p.add_argument("--observe-s", type=float, default=45)
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.add_argument("--static", action="store_true")
    p.add_argument("--assignor", default="range")
    p.add_argument("--group")
    a = p.parse_args()
    if a.stall_s > 120 or a.observe_s > 600 or a.members > 8:
        p.error("bounded on purpose: stall <= 120 s, observe <= 600 s, members <= 8")

    run = uuid.uuid4().hex[:8]
    topic = f"stall.{run}"
    group = a.group or f"stall-{run}"
    admin = AdminClient({"bootstrap.servers": a.broker})
    admin.create_topics([NewTopic(topic, 3, 1)], operation_timeout=10)[topic].result(20)

    t_resume = [None]
    lock = threading.Lock()
    owned = {}
    stop = threading.Event()

    def rel():
        t = time.time()
        return round(t - t_resume[0], 1) if t_resume[0] else None

    def say(member, ev, **kw):
        with lock:
            print(json.dumps({"after_resume_s": rel(), "member": member, "ev": ev, **kw}),
                  flush=True)

    def member(i):
        conf = {
            "bootstrap.servers": a.broker,
            "group.id": group,
            "client.id": f"stall-{i}",
            "session.timeout.ms": a.session_timeout_ms,
            "heartbeat.interval.ms": a.heartbeat_ms,
            "partition.assignment.strategy": a.assignor,
            "enable.auto.commit": True,
            "auto.offset.reset": "earliest",
            "error_cb": lambda err: say(i, "error", code=err.name()),
        }
        if a.static:
            conf["group.instance.id"] = f"stall-{run}-{i}"
        c = Consumer(conf)

        def on_assign(_, parts):
            say(i, "assign", parts=sorted(x.partition for x in parts))

        def on_revoke(_, parts):
            say(i, "revoke", parts=sorted(x.partition for x in parts))

        def on_lost(_, parts):
            say(i, "lost", parts=sorted(x.partition for x in parts))

        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        while not stop.is_set():
            c.poll(0.1)
            try:
                mine = {x.partition for x in c.assignment()}
            except KafkaException:
                mine = set()
            with lock:
                owned[i] = mine
        try:
            c.close()
        except KafkaException:
            pass

    threads = [threading.Thread(target=member, args=(i,), daemon=True)
               for i in range(a.members)]
    for t in threads:
        t.start()

    def group_owns():
        with lock:
            return set().union(*owned.values()) if owned else set()

    deadline = time.time() + 30
    while time.time() < deadline and len(group_owns()) < 3:
        time.sleep(0.2)
    time.sleep(3)  # let heartbeats settle
    before = sorted(group_owns())
    print(json.dumps({"ev": "before_stall", "group_owns": before}), flush=True)
    os.kill(a.broker_pid, signal.SIGSTOP)
    try:
        time.sleep(a.stall_s)
    finally:
        os.kill(a.broker_pid, signal.SIGCONT)
    t_resume[0] = time.time()
    print(json.dumps({"ev": "resumed", "stall_s": a.stall_s}), flush=True)

    first_whole = None
    end = time.time() + a.observe_s
    while time.time() < end:
        time.sleep(0.2)
        if first_whole is None and len(group_owns()) == 3:
            first_whole = rel()
    final = sorted(group_owns())
    stop.set()
    for t in threads:
        t.join(15)
    result = {"ev": "result", "members": a.members, "stall_s": a.stall_s,
              "session_timeout_ms": a.session_timeout_ms, "static": a.static,
              "assignor": a.assignor, "owned_before": before, "owned_at_end": final,
              "first_time_all_owned_after_resume_s": first_whole}
    print(json.dumps(result), flush=True)
    sys.exit(0 if len(final) == 3 else 1)


if __name__ == "__main__":
    main()
