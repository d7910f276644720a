// The client against the real notifier of a running stack (PAYLANE_*_URL, set by
// tests/frontend/test_js_client.py): WebSocket (the `ws` package: Node 20 has no global
// WebSocket), SSE (the `eventsource` package), the fallback from one to the other, and the
// on-connect snapshot.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { EventSource } from "eventsource";
import WebSocket from "ws";

import { PaylaneClient, streamTickets } from "../paylane-client.js";
import { missingStack, pay, placeOrder, signIn, stack } from "../testing/stack.js";

const skip = missingStack() ?? false;

/** A client as a page opens it: POST /orders's ticket first, fresh ones from the
 * session for every reconnect. */
function connect(order, options = {}) {
  const client = new PaylaneClient({
    url: stack.notifier,
    ticket: order.stream_ticket,
    tickets: streamTickets({ api: stack.orderApi, session: order.client_token }),
    WebSocket,
    EventSource,
    backoff: { initialDelayMs: 20, maxDelayMs: 200 },
    ...options,
  });
  return client.start();
}

/** Resolves once the client's stream is open (the snapshot is on its way). */
function opened(client) {
  if (client.state === "open") return Promise.resolve();
  return new Promise((resolve) => {
    const off = client.on("state", (state) => {
      if (state === "open") {
        off();
        resolve();
      }
    });
  });
}

describe("against the notifier", { skip, timeout: 30000 }, () => {
  test("WebSocket: waitUntilPaid resolves from the push when the payer pays", async (t) => {
    const order = await placeOrder(await signIn());
    const client = connect(order);
    t.after(() => client.close());
    await opened(client);
    const paid = client.waitUntilPaid(order.out_trade_no);
    await pay(order.out_trade_no);
    const state = await paid;
    assert.equal(state.status, "paid");
    assert.equal(client.transport, "websocket");
  });

  test("SSE: the same, and a client connecting later learns it from the snapshot", async (t) => {
    const order = await placeOrder(await signIn());
    const client = connect(order, { WebSocket: null });
    t.after(() => client.close());
    await opened(client);
    await Promise.all([client.waitUntilPaid(order.out_trade_no), pay(order.out_trade_no)]);
    assert.equal(client.transport, "sse");

    const later = connect(order);
    t.after(() => later.close());
    const first = new Promise((resolve) => later.on("message", resolve));
    assert.equal((await later.waitUntilPaid(order.out_trade_no)).status, "paid");
    assert.equal((await first).type, "order.state");
  });

  test("tickets come from the order API with the session; the session opens no stream", async (t) => {
    const order = await placeOrder(await signIn());
    const issued = [];
    const tickets = streamTickets({ api: stack.orderApi, session: order.client_token });
    const client = connect(order, {
      ticket: undefined,
      tickets: async () => {
        issued.push(await tickets());
        return issued.at(-1);
      },
    });
    t.after(() => client.close());
    await opened(client);
    assert.equal(issued.length, 1);
    // The notifier refuses the session token itself, on either transport.
    const refused = await fetch(`${stack.notifier}/events?ticket=${order.client_token}`);
    assert.equal(refused.status, 401);
    await refused.body?.cancel();
  });

  test("SSE: a refused (stale) ticket is retried with a fresh one from the session", async (t) => {
    const order = await placeOrder(await signIn());
    const tickets = streamTickets({ api: stack.orderApi, session: order.client_token });
    let asked = 0;
    const client = connect(order, {
      WebSocket: null,
      ticket: "stale-ticket",
      tickets: () => {
        asked += 1;
        return tickets();
      },
    });
    t.after(() => client.close());
    await opened(client);
    assert.equal(asked, 1);
    assert.equal(client.transport, "sse");
    await Promise.all([client.waitUntilPaid(order.out_trade_no), pay(order.out_trade_no)]);
  });

  test("while the stream is down the client polls, and the order API answers paid", async (t) => {
    // A stream that never opens (WebSocket refused, no SSE) and a payment whose
    // notification WeChat Pay never sends: the order API's answer settles the wait.
    class Refused extends WebSocket {
      constructor(url) {
        super(url.replace("/ws?", "/healthz?"));
      }
    }
    const order = await placeOrder(await signIn());
    const client = connect(order, {
      WebSocket: Refused,
      EventSource: null,
      poll: {
        api: stack.orderApi,
        session: order.client_token,
        initialDelayMs: 200,
        maxDelayMs: 1000,
        timeoutMs: 25000,
      },
    });
    t.after(() => client.close());
    const paid = client.waitUntilPaid(order.out_trade_no);
    await pay(order.out_trade_no, { notify: false });
    const state = await paid;
    assert.deepEqual([state.status, state.source], ["paid", "poll"]);
    assert.notEqual(client.state, "open");
  });

  test("a WebSocket that cannot get through falls back to SSE", async (t) => {
    // As a proxy that refuses upgrades would: the handshake goes to a path that is no
    // WebSocket (404), so the socket closes without ever opening.
    class Refused extends WebSocket {
      constructor(url) {
        super(url.replace("/ws?", "/healthz?"));
      }
    }
    const order = await placeOrder(await signIn());
    const client = connect(order, { WebSocket: Refused });
    t.after(() => client.close());
    await opened(client);
    assert.equal(client.transport, "sse");
    await Promise.all([client.waitUntilPaid(order.out_trade_no), pay(order.out_trade_no)]);
  });
});
