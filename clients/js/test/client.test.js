// Unit tests of the client's logic with fake sockets and hand-fired timers:
// reconnect and backoff, the SSE fallback, stream tickets, snapshot, de-duplication,
// waitUntilPaid, and the mini-program adapter over a fake `wx`.
import assert from "node:assert/strict";
import net from "node:net";
import { describe, test } from "node:test";

import WebSocket from "ws";

import {
  backoffDelay,
  OrderNotPaidError,
  OrderPollError,
  OrderWaitTimeoutError,
  PaylaneClient,
  StreamTicketError,
  miniProgramWebSocket,
  streamTickets,
} from "../paylane-client.js";
import {
  fakeEventSource,
  fakeOrderApi,
  fakeWebSocket,
  manualTimers,
  message,
  settle,
} from "../testing/fakes.js";

function client(overrides = {}) {
  const ws = fakeWebSocket();
  const es = fakeEventSource();
  const timers = manualTimers();
  const paylane = new PaylaneClient({
    url: "http://notifier.test/base/",
    ticket: "T0K/EN",
    WebSocket: ws.FakeWebSocket,
    EventSource: es.FakeEventSource,
    random: () => 1,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    ...overrides,
  });
  return { paylane, sockets: ws.sockets, sources: es.sources, timers };
}

describe("backoff", () => {
  test("grows by the factor from the initial delay, capped, with half of it jittered", () => {
    const options = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2 };
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5].map((n) => backoffDelay(n, options, () => 1)),
      [100, 200, 400, 800, 1000, 1000],
    );
    assert.equal(backoffDelay(2, options, () => 0), 200);
  });

  test("a lost connection is retried after growing delays, reset once one opens", async () => {
    const { paylane, sockets, timers } = client({
      backoff: { initialDelayMs: 100, maxDelayMs: 250, factor: 2 },
    });
    paylane.start();
    await settle();
    assert.equal(sockets.length, 1);
    assert.equal(sockets[0].url, "ws://notifier.test/base/ws?ticket=T0K%2FEN");
    sockets[0].open();
    sockets[0].serverClose(1006);
    assert.equal(paylane.state, "waiting");
    assert.equal(timers.fire(), 100);
    await settle();
    sockets[1].open(); // resets the backoff
    sockets[1].serverClose(1013);
    assert.equal(timers.fire(), 100);
    await settle();
    sockets[2].serverClose(1006); // never opened: the delay grows
    assert.equal(timers.fire(), 200);
    await settle();
    sockets[3].open();
    assert.equal(paylane.state, "open");
    assert.equal(paylane.transport, "websocket");
  });

  test("a reconnect resumes after the newest message seen", async () => {
    const { paylane, sockets, timers } = client();
    paylane.start();
    await settle();
    sockets[0].open();
    sockets[0].push(message({ event_id: "e1", occurred_at: "2026-01-01T00:00:05.250Z" }));
    sockets[0].push(message({ event_id: "e0", occurred_at: "2026-01-01T00:00:01.000Z" }));
    sockets[0].serverClose(1006);
    timers.fire();
    await settle();
    const resumed = Date.parse("2026-01-01T00:00:05.250Z");
    assert.equal(sockets[1].url, `ws://notifier.test/base/ws?ticket=T0K%2FEN&last_event_id=${resumed}`);
  });

  test("close() stops reconnecting and rejects waits", async () => {
    const { paylane, sockets, timers } = client();
    paylane.start();
    await settle();
    const waiting = paylane.waitUntilPaid("P1");
    sockets[0].serverClose(1006);
    paylane.close();
    assert.equal(timers.pending.length, 0);
    await assert.rejects(waiting, /client closed/);
  });

  test("close() while a real `ws` socket is still connecting throws nothing", async () => {
    // Node's `ws` emits "error" when a socket is closed before its handshake ends; with no
    // listener left, that was an uncaught exception in the app (a server that accepts
    // the connection and never answers holds the socket in CONNECTING).
    const silent = net.createServer(() => {});
    await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const uncaught = [];
    const record = (error) => uncaught.push(error);
    process.on("uncaughtException", record);
    try {
      const paylane = new PaylaneClient({
        url: `http://127.0.0.1:${silent.address().port}`,
        ticket: "T",
        WebSocket,
        EventSource: null,
      });
      paylane.start();
      await new Promise((resolve) => silent.once("connection", resolve));
      paylane.close();
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(uncaught, []);
    } finally {
      process.off("uncaughtException", record);
      silent.close();
    }
  });
});

describe("SSE fallback", () => {
  test("WebSocket that never opens twice: SSE from then on, resuming from its ids", async () => {
    const { paylane, sockets, sources, timers } = client();
    paylane.start();
    await settle();
    sockets[0].serverClose(1006);
    timers.fire();
    await settle();
    sockets[1].serverClose(1006);
    timers.fire();
    await settle();
    assert.equal(sockets.length, 2);
    assert.equal(sources.length, 1);
    assert.equal(sources[0].url, "http://notifier.test/base/events?ticket=T0K%2FEN");
    sources[0].open();
    assert.equal(paylane.transport, "sse");
    sources[0].push(message({ event_id: "e1" }), "1767225605999");
    sources[0].fail();
    assert.ok(sources[0].closed, "the EventSource's own retry is replaced by ours");
    timers.fire();
    await settle();
    assert.equal(
      sources[1].url,
      "http://notifier.test/base/events?ticket=T0K%2FEN&last_event_id=1767225605999",
    );
  });

  test("without WebSocket (null), SSE at once; without either, an error", async () => {
    const { paylane, sockets, sources } = client({ WebSocket: null });
    paylane.start();
    await settle();
    assert.equal(sockets.length, 0);
    assert.equal(sources.length, 1);
    assert.throws(
      () => new PaylaneClient({ url: "http://x", ticket: "t", WebSocket: null, EventSource: null }),
      TypeError,
    );
  });

  test("with no EventSource (a mini-program), WebSocket is retried for ever", async () => {
    const { paylane, sockets, timers } = client({ EventSource: null });
    paylane.start();
    for (let i = 0; i < 4; i++) {
      await settle();
      sockets[i].serverClose(1006);
      timers.fire();
    }
    await settle();
    assert.equal(sockets.length, 5);
  });
});

describe("stream tickets", () => {
  test("the given ticket opens the first stream; every reconnect asks for a fresh one", async () => {
    let n = 0;
    const { paylane, sockets, timers } = client({ tickets: async () => `t${++n}` });
    paylane.start();
    await settle();
    assert.match(sockets[0].url, /\?ticket=T0K%2FEN$/);
    assert.equal(n, 0);
    sockets[0].open();
    sockets[0].push(message({ event_id: "e1" }));
    sockets[0].serverClose(1006);
    timers.fire();
    await settle();
    assert.match(sockets[1].url, /\?ticket=t1&last_event_id=\d+$/);
    sockets[1].serverClose(1006);
    timers.fire();
    await settle();
    assert.match(sockets[2].url, /\?ticket=t2&/);
  });

  test("an SSE reconnect (Last-Event-ID's resume) takes a fresh ticket too", async () => {
    let n = 0;
    const { paylane, sources, timers } = client({ WebSocket: null, tickets: () => `s${++n}` });
    paylane.start();
    await settle();
    sources[0].open();
    sources[0].push(message({ event_id: "e1" }), "1767225605999");
    sources[0].fail();
    timers.fire();
    await settle();
    assert.equal(
      sources[1].url,
      "http://notifier.test/base/events?ticket=s1&last_event_id=1767225605999",
    );
  });

  test("4401 (the session expired) with tickets: reconnect at once with a fresh ticket", async () => {
    let n = 0;
    const { paylane, sockets, timers } = client({ tickets: async () => `t${++n}` });
    paylane.start();
    await settle();
    sockets[0].open();
    sockets[0].serverClose(4401, "token expired");
    assert.equal(timers.fire(), 0);
    await settle();
    assert.match(sockets[1].url, /ticket=t1/);
  });

  test("SSE's stream.closed message is a session expiry", async () => {
    let n = 0;
    const { paylane, sources, timers } = client({ WebSocket: null, tickets: () => `t${++n}` });
    paylane.start();
    await settle();
    sources[0].open();
    sources[0].push({ type: "stream.closed", reason: "token_expired" });
    assert.ok(sources[0].closed);
    assert.equal(timers.fire(), 0);
    await settle();
    assert.match(sources[1].url, /ticket=t1/);
  });

  test("4401 with a fixed ticket only: the client closes", async () => {
    const { paylane, sockets, timers } = client();
    paylane.start();
    await settle();
    sockets[0].serverClose(4401);
    assert.equal(paylane.state, "closed");
    assert.equal(timers.pending.length, 0);
  });

  test("a ticket that cannot be had is an error, then a retry with backoff", async () => {
    const failures = [];
    let fail = true;
    const { paylane, sockets, timers } = client({
      ticket: undefined,
      tickets: async () => {
        if (fail) throw new Error("offline");
        return "ok";
      },
    });
    paylane.on("error", (error) => failures.push(error.message));
    paylane.start();
    await settle();
    assert.deepEqual(failures, ["offline"]);
    assert.equal(sockets.length, 0);
    fail = false;
    timers.fire();
    await settle();
    assert.match(sockets[0].url, /ticket=ok/);
  });

  test("a session token is no option: `token` is refused", () => {
    assert.throws(() => client({ token: "session" }), /token is no more/);
    assert.throws(() => client({ ticket: undefined }), /ticket or tickets is required/);
  });

  test("streamTickets POSTs the session to /stream-tickets for each ticket", async () => {
    const calls = [];
    let n = 0;
    const fetch = async (url, init) => {
      calls.push([url, init.method, init.headers.Authorization]);
      if (url.includes("down")) return { ok: false, status: 401, json: async () => ({}) };
      return { ok: true, status: 200, json: async () => ({ ticket: `k${++n}` }) };
    };
    let session = "s1";
    const tickets = streamTickets({ api: "https://api.test/order/", session: () => session, fetch });
    assert.equal(await tickets(), "k1");
    session = "s2";
    assert.equal(await tickets(), "k2");
    assert.deepEqual(calls, [
      ["https://api.test/order/stream-tickets", "POST", "Bearer s1"],
      ["https://api.test/order/stream-tickets", "POST", "Bearer s2"],
    ]);
    const refused = streamTickets({ api: "https://down.test", session: "revoked", fetch });
    await assert.rejects(refused(), (error) => error instanceof StreamTicketError && error.status === 401);
  });
});

describe("messages", () => {
  test("the snapshot sets each order's state; live events move it on", async () => {
    const { paylane, sockets } = client();
    const changes = [];
    paylane.on("order", (state) => changes.push(`${state.out_trade_no}:${state.status}`));
    paylane.start();
    await settle();
    sockets[0].open();
    const t = (s) => `2026-01-01T00:00:0${s}.000Z`;
    sockets[0].push(message({ type: "order.state", out_trade_no: "A", status: "paid", occurred_at: t(1) }));
    sockets[0].push(message({ type: "order.state", out_trade_no: "B", status: "pending", occurred_at: t(2) }));
    sockets[0].push(message({ out_trade_no: "B", event_id: "e1", occurred_at: t(3) }));
    sockets[0].push(
      message({
        type: "entitlement.granted",
        out_trade_no: "B",
        payment_status: "premium",
        regenerate_count: 10,
        event_id: "e2",
        occurred_at: t(4),
      }),
    );
    assert.deepEqual(changes, ["A:paid", "B:pending", "B:paid", "B:paid"]);
    assert.deepEqual(paylane.orders.get("B"), {
      out_trade_no: "B",
      status: "paid",
      source: "push",
      payment_status: "premium",
      regenerate_count: 10,
      at: Date.parse(t(4)),
    });
  });

  test("duplicates (same event id, or the same snapshot state) are dropped", async () => {
    const { paylane, sockets, timers } = client();
    const seen = [];
    paylane.on("message", (m) => seen.push(m.event_id ?? m.type));
    paylane.start();
    await settle();
    sockets[0].open();
    const snapshot = message({ type: "order.state", status: "pending" });
    sockets[0].push(snapshot);
    sockets[0].push(message({ event_id: "e1", occurred_at: "2026-01-01T00:00:01.000Z" }));
    sockets[0].push(message({ event_id: "e1", occurred_at: "2026-01-01T00:00:01.000Z" }));
    sockets[0].serverClose(1006);
    timers.fire();
    await settle();
    sockets[1].open();
    sockets[1].push(snapshot); // the same state again on reconnect
    sockets[1].push(message({ event_id: "e1", occurred_at: "2026-01-01T00:00:01.000Z" }));
    assert.deepEqual(seen, ["order.state", "e1"]);
  });

  test("a message older than the order's state does not take it back", async () => {
    const { paylane, sockets } = client();
    paylane.start();
    await settle();
    sockets[0].open();
    sockets[0].push(message({ status: "refunded", event_id: "r", occurred_at: "2026-01-01T00:00:09.000Z" }));
    sockets[0].push(message({ status: "paid", event_id: "p", occurred_at: "2026-01-01T00:00:01.000Z" }));
    assert.equal(paylane.orders.get("P1").status, "refunded");
  });

  test("a listener that throws is reported, not fatal", async () => {
    const { paylane, sockets } = client();
    const errors = [];
    paylane.on("error", (e) => errors.push(e.message));
    paylane.on("message", () => {
      throw new Error("boom");
    });
    paylane.start();
    await settle();
    sockets[0].push(message({ event_id: "e1" }));
    sockets[0].push("not json");
    assert.deepEqual(errors, ["boom", "unparsable message"]);
    assert.equal(paylane.orders.get("P1").status, "paid");
  });
});

describe("waitUntilPaid", () => {
  test("resolves on the push that says paid", async () => {
    const { paylane, sockets } = client();
    paylane.start();
    await settle();
    const paid = paylane.waitUntilPaid("P2");
    sockets[0].push(message({ out_trade_no: "P1", event_id: "other order" }));
    sockets[0].push(message({ out_trade_no: "P2", event_id: "e2" }));
    assert.equal((await paid).status, "paid");
  });

  test("resolves at once when the snapshot already said paid", async () => {
    const { paylane, sockets } = client();
    paylane.start();
    await settle();
    sockets[0].push(message({ type: "order.state", status: "paid" }));
    assert.equal((await paylane.waitUntilPaid("P1")).status, "paid");
  });

  test("rejects when the order failed, or on abort", async () => {
    const { paylane, sockets } = client();
    paylane.start();
    await settle();
    const failed = paylane.waitUntilPaid("P1");
    sockets[0].push(message({ type: "order.state", status: "failed" }));
    await assert.rejects(failed, OrderNotPaidError);
    const controller = new AbortController();
    const aborted = paylane.waitUntilPaid("P9", { signal: controller.signal });
    controller.abort(new Error("user left"));
    await assert.rejects(aborted, /user left/);
  });
});

describe("mini-program adapter", () => {
  function fakeWx() {
    const tasks = [];
    return {
      tasks,
      connectSocket(options) {
        const handlers = {};
        const task = {
          options,
          sent: [],
          closedWith: null,
          onOpen: (cb) => (handlers.open = cb),
          onMessage: (cb) => (handlers.message = cb),
          onClose: (cb) => (handlers.close = cb),
          onError: (cb) => (handlers.error = cb),
          send: ({ data }) => task.sent.push(data),
          close: (opts) => (task.closedWith = opts),
          handlers,
        };
        tasks.push(task);
        return task;
      },
    };
  }

  test("maps SocketTask's callbacks onto the WebSocket interface the client uses", async () => {
    const wx = fakeWx();
    const timers = manualTimers();
    const paylane = new PaylaneClient({
      url: "https://api.example.com",
      ticket: "tok",
      WebSocket: miniProgramWebSocket(wx),
      EventSource: null,
      setTimeout: timers.setTimeout,
      clearTimeout: timers.clearTimeout,
      random: () => 1,
    });
    paylane.start();
    await settle();
    const task = wx.tasks[0];
    assert.equal(task.options.url, "wss://api.example.com/ws?ticket=tok");
    task.handlers.open({});
    assert.equal(paylane.state, "open");
    task.handlers.message({ data: JSON.stringify(message({ event_id: "e1" })) });
    assert.equal(paylane.orders.get("P1").status, "paid");
    task.handlers.error({ errMsg: "net" });
    task.handlers.close({ code: 1006, reason: "gone" });
    assert.equal(paylane.state, "waiting");
    timers.fire();
    await settle();
    assert.equal(wx.tasks.length, 2);
    paylane.close();
    assert.deepEqual(wx.tasks[1].closedWith, { code: 1000, reason: "" });
  });

  test("a connectSocket failure is a close (1006) once, send goes to the task", () => {
    const wx = fakeWx();
    const Socket = miniProgramWebSocket(wx);
    const socket = new Socket("wss://x/ws");
    const closes = [];
    socket.onclose = (e) => closes.push(e.code);
    wx.tasks[0].options.fail({ errMsg: "connectSocket:fail" });
    wx.tasks[0].handlers.close({ code: 1006, reason: "" });
    assert.deepEqual(closes, [1006]);
    socket.send("hi");
    assert.deepEqual(wx.tasks[0].sent, ["hi"]);
  });
});

describe("polling while the stream is down", () => {
  const POLL = { api: "http://api.test/order/", session: "S3SSION", timeoutMs: 60000 };
  const backoff = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2 };
  const settled = async () => {
    for (let i = 0; i < 5; i++) await settle();
  };

  function polling(views, poll = {}) {
    const api = fakeOrderApi(views);
    const made = client({ poll: { ...POLL, ...backoff, fetch: api.fetch, ...poll } });
    return { ...made, api };
  }

  test("polls GET /orders/{no} with backoff until a final state, and says the poll answered", async () => {
    const { paylane, sockets, timers, api } = polling([
      { out_trade_no: "P1", status: "pending" },
      { out_trade_no: "P1", status: "paid", payment_status: "basic", regenerate_count: 23 },
    ]);
    paylane.start();
    await settle();
    sockets[0].serverClose(1006); // never opened: the stream is down
    const paid = paylane.waitUntilPaid("P1");
    timers.fireAt(100); // the first poll
    await settled();
    assert.equal(api.calls.length, 1);
    assert.equal(api.calls[0].url, "http://api.test/order/orders/P1");
    assert.deepEqual(api.calls[0].init.headers, { Authorization: "Bearer S3SSION" });
    assert.equal(paylane.orders.get("P1").status, "pending");
    timers.fireAt(200); // backing off
    const state = await paid;
    assert.deepEqual(
      [state.status, state.payment_status, state.regenerate_count, state.source],
      ["paid", "basic", 23, "poll"],
    );
    // Done: no poll and no timeout left, only the reconnect.
    assert.deepEqual(
      timers.pending.map((t) => t.ms),
      [500],
    );
  });

  test("no poll while the stream is open: the push answers, and says so", async () => {
    const { paylane, sockets, timers, api } = polling([{ out_trade_no: "P1", status: "paid" }]);
    paylane.start();
    await settle();
    const paid = paylane.waitUntilPaid("P1");
    assert.ok(timers.pending.some((t) => t.ms === 100)); // connecting: a poll is due
    sockets[0].open();
    assert.ok(!timers.pending.some((t) => t.ms === 100)); // open: not any more
    sockets[0].push(message({ event_id: "e1" }));
    assert.equal((await paid).source, "push");
    assert.equal(api.calls.length, 0);
  });

  test("a poll never moves an order back; a poll's error is an error event, then the next poll", async () => {
    const { paylane, sockets, timers, api } = polling([503, { out_trade_no: "P1", status: "pending" }]);
    const errors = [];
    paylane.on("error", (e) => errors.push(e));
    paylane.start();
    await settle();
    sockets[0].open();
    sockets[0].push(message({ event_id: "e1", status: "refunded", type: "order.refunded" }));
    sockets[0].serverClose(1006);
    const wait = paylane.waitUntilPaid("P2"); // another order, still unknown
    timers.fireAt(100);
    await settled();
    const polled = errors.find((e) => e instanceof OrderPollError);
    assert.equal(polled.status, 503);
    // The refunded P1 is not a pending one again, whatever a GET of it said.
    paylane._applyPolled({ out_trade_no: "P1", status: "paid" });
    assert.equal(paylane.orders.get("P1").status, "refunded");
    // A closed order paid after all (WeChat Pay's late payment is honoured) moves on.
    paylane._applyPolled({ out_trade_no: "P3", status: "failed" });
    paylane._applyPolled({ out_trade_no: "P3", status: "paid" });
    assert.equal(paylane.orders.get("P3").status, "paid");
    paylane._applyPolled({ out_trade_no: "P3", status: "failed" });
    assert.equal(paylane.orders.get("P3").status, "paid");
    assert.equal(api.calls.length, 1);
    paylane.close();
    await assert.rejects(wait, /client closed/);
  });

  test("gives up after timeoutMs and stops polling", async () => {
    const { paylane, sockets, timers } = polling([{ out_trade_no: "P1", status: "pending" }]);
    paylane.start();
    await settle();
    sockets[0].serverClose(1006);
    const wait = paylane.waitUntilPaid("P1");
    timers.fireAt(60000);
    await assert.rejects(wait, (error) => {
      assert.ok(error instanceof OrderWaitTimeoutError);
      assert.equal(error.outTradeNo, "P1");
      return true;
    });
    assert.ok(!timers.pending.some((t) => t.ms === 100));
  });

  test("an order that ended unpaid rejects the wait with the push's reason", async () => {
    const { paylane, sockets } = polling([]);
    paylane.start();
    await settle();
    sockets[0].open();
    const wait = paylane.waitUntilPaid("P1");
    sockets[0].push(
      message({ type: "order.failed", status: "failed", reason: "expired", event_id: "f1" }),
    );
    await assert.rejects(wait, (error) => {
      assert.ok(error instanceof OrderNotPaidError);
      assert.deepEqual([error.state.status, error.state.reason], ["failed", "expired"]);
      return true;
    });
  });

  test("poll needs the order API and a session", () => {
    assert.throws(() => client({ poll: { api: "http://api.test" } }), /poll needs api/);
  });
});
