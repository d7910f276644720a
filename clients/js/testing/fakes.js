// Test doubles: sockets whose server side the test plays, and timers it fires by hand.

/** A WebSocket class recording every instance; the test opens, sends and closes them. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.closedByClient = false;
      sockets.push(this);
    }
    open() {
      this.onopen?.({});
    }
    push(message) {
      this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) });
    }
    serverClose(code, reason = "") {
      this.onclose?.({ code, reason });
    }
    send() {}
    close() {
      this.closedByClient = true;
    }
  }
  return { FakeWebSocket, sockets };
}

/** An EventSource class recording every instance. */
export function fakeEventSource() {
  const sources = [];
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.onopen = this.onmessage = this.onerror = null;
      this.closed = false;
      sources.push(this);
    }
    open() {
      this.onopen?.({});
    }
    push(message, lastEventId = "") {
      this.onmessage?.({ data: JSON.stringify(message), lastEventId });
    }
    fail() {
      this.onerror?.({});
    }
    close() {
      this.closed = true;
    }
  }
  return { FakeEventSource, sources };
}

/** Timers that run only when the test says: `fire()` runs the next one. */
export function manualTimers() {
  const pending = [];
  return {
    pending,
    setTimeout(callback, ms) {
      const timer = { callback, ms };
      pending.push(timer);
      return timer;
    },
    clearTimeout(timer) {
      const i = pending.indexOf(timer);
      if (i >= 0) pending.splice(i, 1);
    },
    fire() {
      const timer = pending.shift();
      if (!timer) throw new Error("no timer pending");
      timer.callback();
      return timer.ms;
    },
    /** Runs the first pending timer set for `ms`. */
    fireAt(ms) {
      const i = pending.findIndex((timer) => timer.ms === ms);
      if (i < 0) throw new Error(`no timer of ${ms} ms pending (${pending.map((t) => t.ms)})`);
      const [timer] = pending.splice(i, 1);
      timer.callback();
    },
  };
}

/** Lets the client's `await`ed token promise settle. */
export const settle = () => new Promise((resolve) => setImmediate(resolve));

/** A notifier message with every key, as services/notifier sends it. */
export function message(fields) {
  return {
    type: "order.paid",
    out_trade_no: "P1",
    status: "paid",
    payment_status: null,
    regenerate_count: null,
    amount_refund: null,
    generation_id: null,
    reason: null,
    event_id: null,
    occurred_at: "2026-01-01T00:00:00.000Z",
    ...fields,
  };
}

/** A `fetch` for the order API: answers `GET /orders/{no}` with the next of `views` (the
 * last one again once they run out), recording every call. */
export function fakeOrderApi(views) {
  const calls = [];
  const answers = [...views];
  async function fetch(url, init) {
    calls.push({ url, init });
    const view = answers.length > 1 ? answers.shift() : answers[0];
    if (typeof view === "number") return { ok: false, status: view, json: async () => ({}) };
    return { ok: true, status: 200, json: async () => view };
  }
  return { fetch, calls };
}
