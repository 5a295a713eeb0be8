#!/usr/bin/env python3
"""A saga-shaped load for a Kafka-protocol broker, to compare brokers and their settings.

It reproduces the traffic Faultline's three services put on the broker, without the
services: five topics of three partitions, three consumer groups, idempotent producers
(acks=all, linger 5 ms) and offsets stored after each message and committed in the
background every 500 ms, with the consumer settings of crates/outbox/src/kafka.rs.

    checkout:  sends an order to inventory.commands at a set rate (open loop); on
               inventory.events sends payments.commands; on payments.events sends
               orders.events and counts the order as finished
    inventory: inventory.commands -> inventory.events
    payments:  payments.commands  -> payments.events

Each order is therefore 5 produces, 4 consumes and 4 offset stores over three groups.

    saga_load.py run --broker 127.0.0.1:19092 --rate 100 --duration 300 --out DIR
                     [--drain 60] [--session-timeout-ms 6000] [--heartbeat-ms 1000]
                     [--static] [--assignor range|cooperative-sticky] [--broker-pid PID]

`run` creates the topics, starts the three roles as child processes, samples the broker's
CPU (when given its pid) and the load average every second, stops everything after
duration + drain seconds at the latest, and prints one JSON summary (also DIR/summary.json).
Every loop is bounded by those two numbers. Needs the confluent-kafka wheel (librdkafka
>= 2.x; Debian's 2.0.2 cannot talk to tansu).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

TOPICS = ["inventory.commands", "inventory.events", "payments.commands", "payments.events",
          "orders.events"]
ROLES = {
    "checkout": ["inventory.events", "payments.events"],
    "inventory": ["inventory.commands"],
    "payments": ["payments.commands"],
}


def now():
    return time.time()


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, ev, **kw):
        kw.update(t=round(now(), 3), ev=ev)
        with self.lock:
            self.f.write(json.dumps(kw) + "\n")


def consumer_config(a, role):
    c = {
        "bootstrap.servers": a.broker,
        "group.id": f"{a.prefix}{role}",
        "client.id": f"lab-{role}",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 500,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": a.session_timeout_ms,
        "heartbeat.interval.ms": a.heartbeat_ms,
        "fetch.wait.max.ms": 100,
        "partition.assignment.strategy": a.assignor,
    }
    if a.static:
        c["group.instance.id"] = f"lab-{role}-0"
    return c


def producer_config(a, role):
    return {
        "bootstrap.servers": a.broker,
        "client.id": f"lab-{role}-producer",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 30000,
    }


def role_main(a):
    role = a.role
    log = Log(a.events)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    counts = {"consumed": 0, "produced": 0, "delivered": 0, "delivery_errors": 0,
              "finished": 0, "duplicates": 0, "sent": 0, "earlier_runs": 0}
    delivery_ms = []  # produce -> delivery report, per message, this tick
    latencies = []    # order intended send time -> finished, this tick
    finished = set()

    def on_error(err):
        log("error", code=err.name(), text=str(err))

    producer = Producer({**producer_config(a, role), "error_cb": on_error})

    def delivered(err, msg, t_sent=None):
        if err is not None:
            counts["delivery_errors"] += 1
            log("delivery_error", code=err.name(), text=str(err))
        else:
            counts["delivered"] += 1
            if t_sent is not None:
                delivery_ms.append((now() - t_sent) * 1000)

    def produce(topic, key, value):
        t = now()
        for _ in range(200):  # bounded: at most ~20 s of a full local queue
            try:
                producer.produce(a.prefix + topic, key=key, value=value,
                                 on_delivery=lambda e, m, t=t: delivered(e, m, t))
                counts["produced"] += 1
                return
            except BufferError:
                producer.poll(0.1)
        log("produce_gave_up", topic=topic)

    c = Consumer({**consumer_config(a, role), "error_cb": on_error})

    def on_assign(consumer, parts):
        log("assign", parts=[f"{p.topic[len(a.prefix):]}/{p.partition}" for p in parts])

    def on_revoke(consumer, parts):
        log("revoke", parts=[f"{p.topic[len(a.prefix):]}/{p.partition}" for p in parts])

    def on_lost(consumer, parts):
        log("lost", parts=[f"{p.topic[len(a.prefix):]}/{p.partition}" for p in parts])

    c.subscribe([a.prefix + t for t in ROLES[role]], on_assign=on_assign,
                on_revoke=on_revoke, on_lost=on_lost)

    t_start = now()
    deadline = t_start + a.duration + a.drain
    sender = None
    if role == "checkout":
        def send_orders():
            n = int(a.rate * a.duration)
            for i in range(n):
                intended = t_start + i / a.rate
                delay = intended - now()
                if delay > 0 and stop.wait(delay):
                    return
                if stop.is_set():
                    return
                body = json.dumps({"run": a.run, "id": i, "t0": intended}).encode()
                produce("inventory.commands", str(i).encode(), body)
                counts["sent"] += 1
        sender = threading.Thread(target=send_orders, daemon=True)
        sender.start()

    next_tick = now() + 1
    while not stop.is_set() and now() < deadline:
        msg = c.poll(0.05)
        producer.poll(0)
        if msg is not None:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log("consume_error", code=msg.error().name(), text=str(msg.error()))
            else:
                counts["consumed"] += 1
                topic = msg.topic()[len(a.prefix):]
                if role == "inventory":
                    produce("inventory.events", msg.key(), msg.value())
                elif role == "payments":
                    produce("payments.events", msg.key(), msg.value())
                elif topic == "inventory.events":
                    produce("payments.commands", msg.key(), msg.value())
                else:
                    order = json.loads(msg.value())
                    produce("orders.events", msg.key(), msg.value())
                    if order.get("run") != a.run:
                        counts["earlier_runs"] += 1
                    elif order["id"] in finished:
                        counts["duplicates"] += 1
                    else:
                        finished.add(order["id"])
                        counts["finished"] += 1
                        latencies.append((now() - order["t0"]) * 1000)
                try:
                    c.store_offsets(message=msg)
                except KafkaException as e:
                    log("store_error", text=str(e))
        if now() >= next_tick:
            next_tick += 1
            d = sorted(delivery_ms)
            lat = sorted(latencies)
            log("tick", **counts,
                assigned=len(c.assignment()),
                delivery_p50_ms=round(d[len(d) // 2], 1) if d else None,
                delivery_max_ms=round(d[-1], 1) if d else None,
                latency_p50_ms=round(lat[len(lat) // 2], 1) if lat else None,
                latency_p99_ms=round(lat[int(len(lat) * 0.99)], 1) if lat else None)
            delivery_ms.clear()
            latencies.clear()
            if role == "checkout" and sender is not None and not sender.is_alive() \
                    and counts["finished"] >= counts["sent"]:
                break  # everything sent has finished: no need to wait for the drain
    stop.set()
    producer.flush(5)
    try:
        c.close()
    except KafkaException as e:
        log("close_error", text=str(e))
    log("done", **counts)


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def create_topics(a):
    admin = AdminClient({"bootstrap.servers": a.broker})
    fs = admin.create_topics([NewTopic(a.prefix + t, 3, 1) for t in TOPICS],
                             operation_timeout=10, request_timeout=15)
    for t, f in fs.items():
        try:
            f.result(20)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def summarise(a, samples):
    events = {}
    for role in ROLES:
        path = os.path.join(a.out, f"{role}.jsonl")
        events[role] = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    s = {"broker": a.broker, "rate": a.rate, "duration_s": a.duration, "drain_s": a.drain,
         "session_timeout_ms": a.session_timeout_ms, "heartbeat_ms": a.heartbeat_ms,
         "static": a.static, "assignor": a.assignor, "groups": {}}
    t0 = min((e[0]["t"] for e in events.values() if e), default=now())
    for role, ev in events.items():
        ticks = [e for e in ev if e["ev"] == "tick"]
        last = ticks[-1] if ticks else {}
        unassigned_s = sum(1 for e in ticks if e.get("assigned") == 0)
        assigns = [e for e in ev if e["ev"] == "assign"]
        errs = {}
        for e in ev:
            if e["ev"] in ("error", "consume_error", "delivery_error"):
                errs[e["code"]] = errs.get(e["code"], 0) + 1
        s["groups"][role] = {
            "assignments": len(assigns),
            "revocations": sum(1 for e in ev if e["ev"] in ("revoke", "lost")),
            "empty_assignments": sum(1 for e in assigns if not e["parts"]),
            "seconds_owning_nothing": unassigned_s,
            "owned_at_end": last.get("assigned"),
            "consumed": last.get("consumed"),
            "errors": errs,
            "first_revoke_s": next((round(e["t"] - t0, 1) for e in ev
                                    if e["ev"] in ("revoke", "lost")), None),
        }
    ck = [e for e in events["checkout"] if e["ev"] == "tick"]
    if ck:
        last = ck[-1]
        s["orders_sent"] = last["sent"]
        s["orders_finished"] = last["finished"]
        s["duplicates"] = last["duplicates"]
        s["earlier_runs_records"] = last.get("earlier_runs")
        span = [e for e in ck if e["t"] - t0 <= a.duration]
        done_in_span = span[-1]["finished"] if span else 0
        s["finished_per_s_during_load"] = round(done_in_span / max(1, a.duration), 1)
        s["finished_per_s_worst_10s"] = min(
            ((ck[i + 10]["finished"] - ck[i]["finished"]) / 10
             for i in range(0, max(0, min(len(ck), a.duration) - 10))), default=None)
        p99 = [e["latency_p99_ms"] for e in ck if e.get("latency_p99_ms") is not None]
        s["order_latency_p99_ms_worst_second"] = max(p99) if p99 else None
        p50 = sorted(e["latency_p50_ms"] for e in ck if e.get("latency_p50_ms") is not None)
        s["order_latency_p50_ms_median_second"] = p50[len(p50) // 2] if p50 else None
        dmax = [e["delivery_max_ms"] for e in ck if e.get("delivery_max_ms") is not None]
        s["produce_ack_max_ms"] = max(dmax) if dmax else None
        s["last_finish_s"] = next((round(e["t"] - t0, 1) for e in reversed(ck)
                                   if e["finished"] >= last["finished"]), None)
    if samples:
        cpu = [x["broker_cpu_pct"] for x in samples if x.get("broker_cpu_pct") is not None]
        if cpu:
            s["broker_cpu_pct_mean"] = round(sum(cpu) / len(cpu), 1)
            s["broker_cpu_pct_max"] = max(cpu)
        rss = [x["broker_rss_kib"] for x in samples if x.get("broker_rss_kib")]
        if rss:
            s["broker_rss_mib_max"] = round(max(rss) / 1024, 1)
        la = [x["load1"] for x in samples]
        s["load1_mean"] = round(sum(la) / len(la), 2)
        s["load1_max"] = max(la)
    return s


def run_main(a):
    os.makedirs(a.out, exist_ok=True)
    a.run = a.run or os.urandom(4).hex()
    create_topics(a)
    args = [sys.executable, os.path.abspath(__file__), "role", "--broker", a.broker,
            "--prefix", a.prefix, "--rate", str(a.rate), "--duration", str(a.duration),
            "--drain", str(a.drain), "--session-timeout-ms", str(a.session_timeout_ms),
            "--heartbeat-ms", str(a.heartbeat_ms), "--assignor", a.assignor, "--run", a.run]
    if a.static:
        args.append("--static")
    procs = {}
    for role in ["inventory", "payments", "checkout"]:
        procs[role] = subprocess.Popen(
            args + ["--role", role, "--events", os.path.join(a.out, f"{role}.jsonl")],
            stdout=open(os.path.join(a.out, f"{role}.out"), "w"), stderr=subprocess.STDOUT)
    samples = []
    hz = os.sysconf("SC_CLK_TCK")
    prev = cpu_ticks(a.broker_pid) if a.broker_pid else None
    prev_t = now()
    deadline = now() + a.duration + a.drain + 15
    with open(os.path.join(a.out, "samples.jsonl"), "w") as f:
        while now() < deadline and procs["checkout"].poll() is None:
            time.sleep(1)
            x = {"t": round(now(), 3), "load1": os.getloadavg()[0]}
            if a.broker_pid:
                cur = cpu_ticks(a.broker_pid)
                if cur is not None and prev is not None:
                    x["broker_cpu_pct"] = round((cur - prev) / hz / (now() - prev_t) * 100, 1)
                prev, prev_t = cur, now()
                x["broker_rss_kib"] = rss_kib(a.broker_pid)
                x["broker_alive"] = cur is not None
            samples.append(x)
            f.write(json.dumps(x) + "\n")
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    s = summarise(a, samples)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(s, f, indent=1)
    print(json.dumps(s, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["run", "role"])
    p.add_argument("--broker", default="127.0.0.1:19092")
    p.add_argument("--prefix", default="lab.")
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--duration", type=int, default=300)
    p.add_argument("--drain", type=int, default=60)
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.add_argument("--static", action="store_true")
    p.add_argument("--assignor", default="range")
    p.add_argument("--broker-pid", type=int)
    p.add_argument("--out", default="/tmp/broker-lab/run")
    p.add_argument("--role", choices=list(ROLES))
    p.add_argument("--events")
    p.add_argument("--run", help="tag of this run's orders (records of earlier runs on the "
                   "same topics are processed but not counted)")
    a = p.parse_args()
    if a.duration > 3600 or a.drain > 900 or a.rate > 5000:
        p.error("bounded on purpose: duration <= 3600 s, drain <= 900 s, rate <= 5000/s")
    if a.mode == "run":
        run_main(a)
    else:
        role_main(a)


if __name__ == "__main__":
    main()
