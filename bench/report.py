"""The bench's markdown table and latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    wake = m.get("loopback_round_trip_cpu_us", {})
    wake_note = (
        " CPU per loopback echo round trip (server + client µs): "
        + ", ".join(f"{k[5:]}/s {v['server_us']} + {v['client_us']}" for k, v in wake.items())
        + "."
        if wake
        else ""
    )
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']};"
        f" RabbitMQ {m.get('rabbitmq', '?')}; MariaDB {m.get('mariadb', '?')}. {m['note']}."
        + wake_note
        + (" QUICK RUN: smoke numbers only." if results.get("quick") else "")
        + _load_note(results),
        "",
        "| scenario | offered | acked/s | ack p50 ms | ack p95 ms | ack p99 ms | non-2xx/errors |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, offered: str, r: dict[str, Any]) -> None:
        lines.append(
            f"| {name} | {offered} | {r['rate_per_s']} | {r['p50_ms']} | {r['p95_ms']} |"
            f" {r['p99_ms']} | {r['non_2xx']}/{r['errors']} |"
        )

    ingress = results.get("ingress_alone", {})
    for prefix, who in (("", "ingress alone"), ("x2_", "ingress alone, 2 replicas")):
        if f"{prefix}saturation" in ingress:
            row(f"{who}, saturation (64 concurrent)", "max", ingress[f"{prefix}saturation"])
        for key, r in ingress.items():
            if key.startswith(f"{prefix}rate_"):
                row(who, f"{key[len(prefix) + 5 :]}/s", r)
    e2e = results.get("end_to_end", {})
    for key, r in e2e.items():
        if key.startswith("rate_"):
            row("end to end: acks", f"{key[5:]}/s", r["acks"])
    if "prioritized_rate_1000" in e2e:
        row(
            "end to end: acks, consumers at nice 10", "1000/s", e2e["prioritized_rate_1000"]["acks"]
        )
    if "duplicates_500" in e2e:
        row("duplicates (already applied)", "500/s", e2e["duplicates_500"])
    base = results.get("baseline", {})
    for key, r in base.items():
        who, _, rate = key.rpartition("_")
        label = {"paylane_nice_consumers": "paylane, consumers at nice 10"}.get(who, who)
        row(label.replace("_", " "), f"{rate}/s", r)

    lines += [
        "",
        "| end to end | orders | pushed | notify→push p50 ms | p95 ms | p99 ms | grant p99 ms"
        " | drained after last send s | backlog growth | RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in e2e.items():
        if key.startswith(("rate_", "prioritized_rate_")):
            label = f"{key.rpartition('_')[2]}/s" + (", nice" if key.startswith("prio") else "")
            lines.append(
                f"| {label} | {r['orders']} | {r['pushed_order_paid']} |"
                f" {r['notify_to_push_p50_ms']} | {r['notify_to_push_p95_ms']} |"
                f" {r['notify_to_push_p99_ms']} | {r['granted_p99_ms']} |"
                f" {r['drain_after_last_send_s']} | {r['backlog_growth']} | {r['rss_mib']} |"
            )
    lines += _bursts(results.get("burst", {}))
    lines += _rounds(results.get("rounds", {}))
    lines += _cpu_tables(results)
    ratios = []
    for rate, who in ((r, w) for w in ("paylane", "paylane_nice_consumers") for r in (200, 500)):
        p, b = base.get(f"{who}_{rate}"), base.get(f"baseline_{rate}")
        if p and b and p["p99_ms"] and b["p99_ms"]:
            faster, slower = ("paylane", "baseline")
            ratio = b["p99_ms"] / p["p99_ms"]
            if ratio < 1:
                faster, slower, ratio = slower, faster, 1 / ratio
            how = ", consumers at nice 10" if "nice" in who else ""
            ratios.append(
                f"ack p99 at {rate}/s, fast database{how}: paylane {p['p99_ms']} ms, baseline"
                f" {b['p99_ms']} ms ({faster} {ratio:.1f}x lower than {slower})"
            )
    p, b = base.get("paylane_slow_db_100"), base.get("baseline_slow_db_100")
    if p and b and p["p99_ms"]:
        ratios.append(
            f"MySQL +500 ms/query at 100/s: ack p99 baseline {b['p99_ms']} ms vs paylane"
            f" {p['p99_ms']} ms ({b['p99_ms'] / p['p99_ms']:.0f}x); acked/s baseline"
            f" {b['rate_per_s']} vs paylane {p['rate_per_s']}"
        )
    logs = results.get("log_lines")
    if logs:
        ratios.append(
            f"a payment's {logs['lines_per_payment']} log lines: paylane"
            f" {logs['paylane_us_per_payment']} µs of CPU, the inline line"
            f" {logs['inline_us_per_payment']} µs ({logs['ratio']}x)"
        )
    if ratios:
        lines += ["", *[f"- {r}" for r in ratios]]
    return "\n".join(_without_empty_tables(lines))


def _without_empty_tables(lines: list[str]) -> list[str]:
    """The lines without the tables that have no rows (the phases a run left out)."""
    kept: list[str] = []
    i = 0
    while i < len(lines):
        header = lines[i : i + 2]
        if len(header) == 2 and header[0].startswith("| ") and header[1].startswith("|---"):
            rows = lines[i + 2 : i + 3]
            if not rows or not rows[0].startswith("| "):
                if kept and not kept[-1]:
                    kept.pop()  # the blank line before it
                i += 2
                continue
        kept.append(lines[i])
        i += 1
    return kept


PROCESSES = (
    "ingress",
    "ingress-2",
    "order",
    "entitlement",
    "notifier",
    "consumers",
    "baseline",
    "rabbitmq",
    "mariadb",
)
#: The issue's targets for CPU per payment at saturation (µs, all processes / RabbitMQ).
CPU_TARGET_TOTAL_US, CPU_TARGET_RABBITMQ_US = 2500, 600
RATES = (1000, 1500)


def _load_note(results: dict[str, Any]) -> str:
    """The machine's load averages when the run started and ended (a shared machine)."""
    load = results.get("load", {})
    if not load:
        return ""
    return (
        " Load average (1/5/15 min): "
        + ", ".join(f"{when} {'/'.join(str(v) for v in values)}" for when, values in load.items())
        + "."
    )


def _bursts(burst: dict[str, Any]) -> list[str]:
    """paylane at its default start against the inline baseline, burst by burst, from the
    same run: the acknowledgement, then how long paylane took to grant and push it all."""
    rates = [r for r in RATES if f"paylane_{r}" in burst and f"baseline_{r}" in burst]
    if not rates:
        return []
    lines = [
        "",
        f"Bursts: {burst['seconds']} s of fresh orders' notifications, open loop; paylane as"
        " `make run` starts it (the Procfile: consumers at `nice 10`; they yield while"
        " ingress is busy)"
        + (f", consumers with {burst['consumer_env']}" if burst.get("consumer_env") else "")
        + ", then the inline baseline at the same rate. paylane ÷ baseline < 1: paylane is"
        " faster.",
        "",
        "| burst | acked/s paylane | baseline | ack p50 ms paylane | baseline | ack p99 ms"
        " paylane | baseline | p99 paylane ÷ baseline | non-2xx/errors paylane | baseline"
        " | pushed (of wanted; WebSockets dropped) | drained after last send s"
        " | backlog after burst | load 1 min before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        p, b = burst[f"paylane_{rate}"], burst[f"baseline_{rate}"]
        pa, ba = p["acks"], b["acks"]
        ratio = f"{pa['p99_ms'] / ba['p99_ms']:.2f}" if ba["p99_ms"] else "?"
        loads = f"{p['load'][0][0]}/{p['load'][1][0]}, {b['load'][0][0]}/{b['load'][1][0]}"
        if "settled_s" in p:  # waited for the machine to go idle before each burst
            loads += f" (idle after {p['settled_s']} s, {b['settled_s']} s)"
        lines.append(
            f"| {rate}/s | {pa['rate_per_s']} | {ba['rate_per_s']} | {pa['p50_ms']} |"
            f" {ba['p50_ms']} | {pa['p99_ms']} | {ba['p99_ms']} | {ratio} |"
            f" {pa['non_2xx']}/{pa['errors']} | {ba['non_2xx']}/{ba['errors']} |"
            f" {p['pushed']} ({p['pushes_wanted']}; {p.get('websocket_drops', '?')} drops) |"
            f" {p['drain_after_last_send_s']} |"
            f" {p['backlog_after_burst']} | {loads} |"
        )
    return lines


def _cpu_tables(results: dict[str, Any]) -> list[str]:
    """CPU per unit of work by process, against the budget the machine gives at that rate."""
    cores = results["machine"]["cores"]
    lines: list[str] = []
    floor = results.get("broker_floor", {})
    windows = [k for k in floor if k.startswith("window_")]
    if windows:
        lines += [
            "",
            f"Broker floor: confirmed persistent publishes of a {floor['message_bytes']}-byte"
            " payment.succeeded into the paylane exchange (order.payments quorum queue +"
            " paylane.log stream) from a minimal client.",
            "",
            "| publishes awaiting confirm | confirmed/s | RabbitMQ µs CPU/publish"
            " | client µs/publish | RabbitMQ cores busy |",
            "|---|---|---|---|---|",
        ]
        for key in windows:
            r = floor[key]
            cpu = r["cpu_us_per_unit"]
            busy = cpu.get("rabbitmq", 0) * r["units"] / 1e6 / (r["wall_s"] or 1)
            lines.append(
                f"| {key[7:]} | {r['confirmed_per_s']} | {cpu.get('rabbitmq', '?')} |"
                f" {cpu.get('client', '?')} | {busy:.2f} |"
            )
    paced = floor.get("paced_1000")
    if paced:
        lines += [
            "",
            f"The same client paced at 1000/s, each publish awaiting its confirm: p50"
            f" {paced['p50_ms']} ms, p95 {paced['p95_ms']} ms, p99 {paced['p99_ms']} ms"
            " (the broker's part of an acknowledgement, with the cores to itself).",
        ]
    rows = []
    ingress = results.get("ingress_alone", {})
    for prefix, label in (("", "ingress alone, saturation"), ("x2_", "2 replicas, saturation")):
        if f"{prefix}saturation_cpu" in ingress:
            rate = ingress[f"{prefix}saturation"]["rate_per_s"]
            rows.append((label, rate, ingress[f"{prefix}saturation_cpu"]))
    for key, r in results.get("end_to_end", {}).items():
        if key.startswith(("rate_", "prioritized_rate_")) and "cpu" in r:
            label = f"end to end {key.rpartition('_')[2]}/s" + (
                ", nice" if key.startswith("prio") else ""
            )
            rows.append((label, r["acks"]["rate_per_s"], r["cpu"]))
    burst = results.get("burst", {})
    for rate in RATES:
        for who in ("paylane", "baseline"):
            if f"{who}_{rate}" in burst:
                r = burst[f"{who}_{rate}"]
                rows.append((f"burst {rate}/s, {who}", r["acks"]["rate_per_s"], r["cpu"]))
    if rows:
        lines += [
            "",
            "CPU µs per notification (ingress alone) or per payment (end to end, from the first"
            " send until every grant was pushed), by process; the budget is what the machine's"
            f" {cores} cores give each at the rate achieved.",
            "",
            f"| scenario | rate/s | {' | '.join(PROCESSES)} | bench | total | budget"
            " | machine user/kernel/idle/steal % |",
            "|---|---|" + "---|" * (len(PROCESSES) + 4),
        ]
        for label, rate, cpu in rows:
            per = cpu["cpu_us_per_unit"]
            m = cpu["machine_pct"]
            cells = " | ".join(str(per.get(p, "")) for p in PROCESSES)
            budget = round(cores * 1e6 / rate) if rate else ""
            lines.append(
                f"| {label} | {rate} | {cells} | {per.get('bench', '')} | {per['total']} |"
                f" {budget} | {m['user']}/{m['kernel']}/{m['idle']}/{m['steal']} |"
            )
    for rate in RATES:
        if f"paylane_{rate}" in burst:
            per = burst[f"paylane_{rate}"]["cpu"]["cpu_us_per_unit"]
            theirs = burst.get(f"baseline_{rate}", {}).get("cpu", {}).get("cpu_us_per_unit", {})
            # The machine's speed moves within the hour; the baseline of the same run moves
            # with it, so this ratio compares runs where the absolute µs cannot.
            ratio = (
                f" That is {per['total'] / theirs['total']:.2f}× the inline baseline's"
                f" {theirs['total']} µs per payment in the same run."
                if theirs.get("total")
                else ""
            )
            lines.append(
                f"\nAt saturation (paylane, burst {rate}/s, first send to last push): "
                f"{per['total']} µs per payment in total (target ≤ {CPU_TARGET_TOTAL_US}),"
                f" RabbitMQ {per.get('rabbitmq', '?')} µs (target ≤ {CPU_TARGET_RABBITMQ_US})."
                + ratio
            )
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ingress = results.get("ingress_alone", {})
    rates = sorted(int(k[5:]) for k in ingress if k.startswith("rate_"))
    for p in ("p50_ms", "p95_ms", "p99_ms"):
        axes[0].plot(
            rates, [ingress[f"rate_{r}"][p] for r in rates], marker="o", label=f"ingress {p[:3]}"
        )
    rates2 = sorted(int(k[8:]) for k in ingress if k.startswith("x2_rate_"))
    if rates2:
        axes[0].plot(
            rates2,
            [ingress[f"x2_rate_{r}"]["p99_ms"] for r in rates2],
            marker="s",
            label="2 ingress replicas p99",
        )
    base = results.get("baseline", {})
    brates = sorted(
        int(k.rpartition("_")[2]) for k in base if k.startswith("baseline_") and "slow" not in k
    )
    if brates:
        axes[0].plot(
            brates,
            [base[f"baseline_{r}"]["p99_ms"] for r in brates],
            marker="x",
            linestyle="--",
            label="inline baseline p99",
        )
    axes[0].set(
        title="Ack latency vs offered rate", xlabel="notifications/s", ylabel="ms", yscale="log"
    )
    axes[0].legend()
    e2e = results.get("end_to_end", {})
    erates = sorted(int(k[5:]) for k in e2e if k.startswith("rate_"))
    for p in ("notify_to_push_p50_ms", "notify_to_push_p95_ms", "notify_to_push_p99_ms"):
        axes[1].plot(
            erates, [e2e[f"rate_{r}"][p] for r in erates], marker="o", label=p.split("_")[-2]
        )
    axes[1].set(title="Notify → WebSocket push", xlabel="payments/s", ylabel="ms", yscale="log")
    axes[1].legend()
    fig.suptitle(f"paylane on {results['machine']['cores']} cores, everything co-located")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def round_line(n: int, results: dict[str, Any]) -> str:
    """One round as it ends (printed during the run): each contender's ack p99 and CPU."""
    parts = [
        f"{who}: p99 {r['acks']['p99_ms']} ms, {r['cpu']['cpu_us_per_unit']['total']} µs/payment"
        for who, r in results.items()
    ]
    return f"round {n + 1}: " + "; ".join(parts)


def _rounds(rounds: dict[str, Any]) -> list[str]:
    """Issue 31's two ratios, round by round: ack p99 and CPU per payment of each consumers'
    mode against the inline baseline of the same round, and how many rounds each won."""
    if not rounds.get("rounds"):
        return []
    modes = rounds["modes"]
    lines = [
        "",
        f"Rounds: {len(rounds['rounds'])} × a {rounds['seconds']} s burst at {rounds['rate']}/s"
        " (open loop) to paylane (" + ", ".join(modes) + " consumers) and to the inline baseline,"
        " in turn. Ratios: paylane ÷ baseline of the same round (< 1: paylane is faster or"
        " cheaper). CPU: every process, first send to last push (paylane) or last answer.",
        "",
        "| round | "
        + " | ".join(f"{m} p99 ms | {m} CPU µs | {m} p99 ratio | {m} CPU ratio" for m in modes)
        + " | baseline p99 ms | baseline CPU µs | load 1 min |",
        "|---|" + "---|---|---|---|" * len(modes) + "---|---|---|",
    ]
    won = {m: 0 for m in modes}
    cpu_ratios: dict[str, list[float]] = {m: [] for m in modes}
    for n, r in enumerate(rounds["rounds"], 1):
        b = r["baseline"]
        b99, bcpu = b["acks"]["p99_ms"], b["cpu"]["cpu_us_per_unit"]["total"]
        cells = []
        for m in modes:
            p99, cpu = r[m]["acks"]["p99_ms"], r[m]["cpu"]["cpu_us_per_unit"]["total"]
            won[m] += p99 <= b99 and r[m]["pushed"] == r[m]["pushes_wanted"]
            cpu_ratios[m].append(cpu / bcpu if bcpu else float("nan"))
            ratio = f"{p99 / b99:.2f}" if b99 else "?"
            cells.append(f"{p99} | {cpu} | {ratio} | {cpu_ratios[m][-1]:.2f}")
        load = "/".join(str(r[w]["load"][0][0]) for w in (*modes, "baseline"))
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {b99} | {bcpu} | {load} |")
    lines.append("")
    for m in modes:
        ratios = sorted(cpu_ratios[m])
        median = (
            ratios[len(ratios) // 2]
            if len(ratios) % 2
            else sum(ratios[len(ratios) // 2 - 1 : len(ratios) // 2 + 1]) / 2
        )
        lines.append(
            f"- {m}: ack p99 ≤ the baseline's (every payment pushed) in {won[m]} rounds of"
            f" {len(ratios)} (target: 8 of 10); CPU per payment {median:.2f}× the baseline's"
            f" (median; {ratios[0]:.2f}–{ratios[-1]:.2f}; target ≤ 2.0)."
        )
    return lines
