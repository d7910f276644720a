// paylane-client.js: the paying client's side of the paylane notifier.
// A plain ES module, no dependencies, no build step; types in paylane-client.d.ts.
//
// Opens the notifier's WebSocket (GET /ws?ticket=…) with a short-lived stream ticket (a
// fresh one for every connect: POST /stream-tickets on the order API, see streamTickets),
// falls back to Server-Sent Events (GET /events?ticket=…) where WebSocket cannot connect,
// reconnects with exponential backoff and jitter (resuming with ?last_event_id=), applies the on-connect
// snapshot, drops duplicate messages and keeps each order's latest state, so that a page
// can simply `await client.waitUntilPaid(outTradeNo)`. While the stream is down it polls
// the order API (GET /orders/{no}) for the orders waited for, with backoff, until a final
// state or a timeout; every order state says which source gave it (`push` or `poll`).

/** Close codes the notifier uses (services/notifier/src/paylane_notifier/websocket.py). */
export const CLOSE_TOKEN_EXPIRED = 4401;
export const CLOSE_TOO_MANY_FOR_USER = 4429;
export const CLOSE_FULL = 1013;

/** A stream ticket could not be had: `status` is the order API's answer (401: the session
 * expired or was revoked; sign in again), or 0 when it could not be reached. */
export class StreamTicketError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) {
    super(message);
    this.name = "StreamTicketError";
    this.status = status;
  }
}

/**
 * A `tickets` function for PaylaneClient: a fresh stream ticket from the order API
 * (`POST {api}/stream-tickets` with `Authorization: Bearer <session>`) each time it is
 * called. `session` is the user's session token (the `client_token` of POST /orders, or
 * that of a sign-in), or a function giving the current one.
 * @param {import("./paylane-client").StreamTicketsOptions} options
 * @returns {() => Promise<string>}
 */
export function streamTickets({ api, session, fetch: fetchImpl = globalThis.fetch }) {
  if (!api) throw new TypeError("streamTickets: api (the order API's base URL) is required");
  if (!session) throw new TypeError("streamTickets: session is required");
  const url = `${absolute(api)}/stream-tickets`;
  return async () => {
    const token = typeof session === "function" ? await session() : session;
    let response;
    try {
      response = await fetchImpl(url, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
      });
    } catch (error) {
      throw new StreamTicketError(0, `POST /stream-tickets: ${error && error.message}`);
    }
    if (!response.ok) {
      throw new StreamTicketError(response.status, `POST /stream-tickets: ${response.status}`);
    }
    return (await response.json()).ticket;
  };
}

/** Order statuses after which nothing more is expected while waiting for a payment. */
const PAID_STATUSES = new Set(["paid", "refunded"]);
const FAILED_STATUSES = new Set(["failed", "needs_review"]);
/** Where a status is in an order's life: a poll's answer never moves an order back (a push
 * may be newer than the row a GET read). */
// A closed (failed) order may still be paid: WeChat Pay's late payment is honoured, so
// paid ranks above failed and a poll may move a failed order on to paid, never back.
const STATUS_RANK = { pending: 0, failed: 1, paid: 2, needs_review: 3, refunded: 3 };

/** Polling while the stream is down: as the existing front end (every 2 s, giving up after
 * 5 minutes), but backing off. */
const POLL_DEFAULTS = { initialDelayMs: 2000, maxDelayMs: 15000, factor: 1.5, timeoutMs: 300000 };

const DEFAULTS = {
  initialDelayMs: 500,
  maxDelayMs: 30000,
  factor: 2,
  /** Failed WebSocket attempts (never opened) before switching to SSE, where available. */
  wsAttemptsBeforeSse: 2,
  /** How many message keys are remembered to drop duplicates. */
  dedupeWindow: 1000,
};

/** An order the client was told about turned out not to be payable any more. */
export class OrderNotPaidError extends Error {
  /** @param {import("./paylane-client").OrderState} state */
  constructor(state) {
    super(`order ${state.out_trade_no} is ${state.status}`);
    this.name = "OrderNotPaidError";
    this.state = state;
  }
}

/** `waitUntilPaid` gave up: no final state within `timeoutMs`. */
export class OrderWaitTimeoutError extends Error {
  /** @param {string} outTradeNo @param {number} timeoutMs */
  constructor(outTradeNo, timeoutMs) {
    super(`order ${outTradeNo}: no final state within ${timeoutMs} ms`);
    this.name = "OrderWaitTimeoutError";
    this.outTradeNo = outTradeNo;
    this.timeoutMs = timeoutMs;
  }
}

/** A poll of GET /orders/{no} was answered with an error (`status`; 0: unreachable). */
export class OrderPollError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) {
    super(message);
    this.name = "OrderPollError";
    this.status = status;
  }
}

/**
 * The delay before reconnect attempt `attempt` (0-based): exponential, capped, with
 * "equal jitter" (between half and all of it) so that clients do not come back in step.
 * @param {number} attempt
 * @param {{initialDelayMs: number, maxDelayMs: number, factor: number}} options
 * @param {() => number} random
 */
export function backoffDelay(attempt, options, random = Math.random) {
  const ceiling = Math.min(options.maxDelayMs, options.initialDelayMs * options.factor ** attempt);
  return ceiling / 2 + (ceiling / 2) * random();
}

/**
 * The id a message resumes from: its `occurred_at` in integer milliseconds since the epoch
 * (the notifier's SSE `id:` and `?last_event_id=`).
 * @param {{occurred_at?: string | null}} message
 * @returns {number | null}
 */
export function messageId(message) {
  const ms = message.occurred_at ? Date.parse(message.occurred_at) : NaN;
  return Number.isFinite(ms) ? ms : null;
}

/** What makes two messages the same: the event id, or for a snapshot's `order.state`
 * (which has none) the state it states at its time. */
function dedupeKey(message) {
  if (message.event_id) return `e:${message.event_id}`;
  return `s:${message.type}|${message.out_trade_no}|${message.status}|${message.payment_status}|${message.occurred_at}`;
}

/** `http(s)://host/base` (or `/base`, resolved against the page) → `ws(s)://host/base`. */
function absolute(base) {
  if (/^[a-z]+:\/\//i.test(base)) return base.replace(/\/+$/, "");
  const origin = globalThis.location && globalThis.location.origin;
  if (!origin) throw new Error(`notifier URL ${base} must be absolute here`);
  return (origin + base).replace(/\/+$/, "");
}

function query(params) {
  return Object.entries(params)
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(String(value))}`)
    .join("&");
}

/**
 * A WebSocket-like constructor over a mini-program's `wx.connectSocket` (its SocketTask:
 * onOpen / onMessage / onClose / onError / send / close), for `new PaylaneClient({WebSocket})`.
 * @param {import("./paylane-client").WxLike} wx
 * @returns {import("./paylane-client").WebSocketConstructor}
 */
export function miniProgramWebSocket(wx) {
  return class MiniProgramSocket {
    /** @param {string} url */
    constructor(url) {
      this.url = url;
      this.readyState = 0; // CONNECTING
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      this._task = wx.connectSocket({
        url,
        fail: (err) => this._closed(1006, (err && err.errMsg) || "connectSocket failed"),
      });
      this._task.onOpen(() => {
        this.readyState = 1; // OPEN
        if (this.onopen) this.onopen({});
      });
      this._task.onMessage((msg) => {
        if (this.onmessage) this.onmessage({ data: msg.data });
      });
      this._task.onError((err) => {
        if (this.onerror) this.onerror({ message: (err && err.errMsg) || "socket error" });
      });
      this._task.onClose((res) => this._closed(res && res.code, res && res.reason));
    }

    _closed(code, reason) {
      if (this.readyState === 3) return;
      this.readyState = 3; // CLOSED
      if (this.onclose) this.onclose({ code: code || 1006, reason: reason || "" });
    }

    /** @param {string} data */
    send(data) {
      this._task.send({ data });
    }

    /** @param {number} [code] @param {string} [reason] */
    close(code = 1000, reason = "") {
      if (this.readyState >= 2) return;
      this.readyState = 2; // CLOSING
      this._task.close({ code, reason });
    }
  };
}

export class PaylaneClient {
  /** @param {import("./paylane-client").PaylaneClientOptions} options */
  constructor(options) {
    if (!options || !options.url) throw new TypeError("PaylaneClient: url is required");
    if (options.token !== undefined) {
      throw new TypeError(
        "PaylaneClient: token is no more: the notifier takes stream tickets only (pass" +
          " ticket and/or tickets, e.g. tickets: streamTickets({api, session}))",
      );
    }
    if (!options.ticket && !options.tickets) {
      throw new TypeError("PaylaneClient: ticket or tickets is required");
    }
    this._base = options.url;
    /** The first connect's ticket (e.g. POST /orders's stream_ticket); without `tickets`
     * it is used again, which works for as long as it lives (a minute). */
    this._ticket = options.ticket || null;
    /** Asked for a fresh ticket before every other connect. */
    this._tickets = options.tickets || null;
    this._WebSocket = options.WebSocket !== undefined ? options.WebSocket : globalThis.WebSocket;
    this._EventSource =
      options.EventSource !== undefined ? options.EventSource : globalThis.EventSource;
    this._options = { ...DEFAULTS, ...(options.backoff || {}) };
    if (options.wsAttemptsBeforeSse !== undefined) {
      this._options.wsAttemptsBeforeSse = options.wsAttemptsBeforeSse;
    }
    if (options.poll) {
      if (!options.poll.api || !options.poll.session) {
        throw new TypeError("PaylaneClient: poll needs api (the order API) and session");
      }
      this._poll = { ...POLL_DEFAULTS, ...options.poll };
    } else {
      this._poll = null;
    }
    /** How many waits watch each order (polled while the stream is down). */
    this._watched = new Map();
    this._pollTimer = null;
    this._pollAttempt = 0;
    this._polling = false;
    this._random = options.random || Math.random;
    this._setTimeout = options.setTimeout || globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout || globalThis.clearTimeout.bind(globalThis);
    /** @type {Map<string, import("./paylane-client").OrderState>} */
    this.orders = new Map();
    /** @type {"websocket" | "sse" | null} */
    this.transport = null;
    /** @type {"idle" | "connecting" | "open" | "waiting" | "closed"} */
    this.state = "idle";
    /** The newest message id seen: where a reconnect resumes. */
    this.lastEventId = null;
    this._listeners = new Map();
    this._seen = new Set();
    this._attempt = 0;
    this._wsFailures = 0;
    this._socket = null;
    this._timer = null;
    this._closed = false;
    this._useSse = !this._WebSocket;
    if (!this._WebSocket && !this._EventSource) {
      throw new TypeError("PaylaneClient: no WebSocket (pass one, or an adapter) nor EventSource");
    }
  }

  /** Connect (again); returns the client. */
  start() {
    this._closed = false;
    if (this.state === "idle" || this.state === "closed") this._connect();
    return this;
  }

  /** Close for good: no reconnect; pending waits are rejected. */
  close() {
    this._closed = true;
    if (this._timer !== null) this._clearTimeout(this._timer);
    this._timer = null;
    this._drop();
    this._setState("closed");
  }

  /**
   * `listener` for `event`: "message" (every new message), "order" (an order's state
   * changed), "state" (connecting / open / waiting / closed), "error". Returns `off`.
   * @param {string} event
   * @param {(value: any) => void} listener
   */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this._listeners.get(event).delete(listener);
  }

  /**
   * Resolves with the order's state once it is paid (or already refunded); rejects with
   * an OrderNotPaidError once it is failed or needs review, or when the client is closed
   * or `signal` aborts. With `poll`, the order is polled while the stream is down, and the
   * wait rejects with an OrderWaitTimeoutError after `timeoutMs` (`poll.timeoutMs`, 5
   * minutes; without `poll`, none unless given). The state's `source` says whether a push
   * or a poll gave the answer.
   * @param {string} outTradeNo
   * @param {{signal?: AbortSignal, timeoutMs?: number}} [options]
   * @returns {Promise<import("./paylane-client").OrderState>}
   */
  waitUntilPaid(outTradeNo, options = {}) {
    return new Promise((resolve, reject) => {
      const offs = [];
      const done = (fn, value) => {
        offs.forEach((off) => off());
        fn(value);
      };
      const check = (state) => {
        if (!state || state.out_trade_no !== outTradeNo) return;
        if (PAID_STATUSES.has(state.status)) done(resolve, state);
        else if (FAILED_STATUSES.has(state.status)) done(reject, new OrderNotPaidError(state));
      };
      offs.push(this.on("order", check));
      offs.push(
        this.on("state", (state) => {
          if (state === "closed") done(reject, new Error("client closed"));
        }),
      );
      const timeoutMs = options.timeoutMs ?? (this._poll ? this._poll.timeoutMs : null);
      if (timeoutMs) {
        const timer = this._setTimeout(
          () => done(reject, new OrderWaitTimeoutError(outTradeNo, timeoutMs)),
          timeoutMs,
        );
        offs.push(() => this._clearTimeout(timer));
      }
      if (this._poll) offs.push(this._watch(outTradeNo));
      const signal = options.signal;
      if (signal) {
        const abort = () => done(reject, signal.reason || new Error("aborted"));
        if (signal.aborted) return abort();
        signal.addEventListener("abort", abort, { once: true });
        offs.push(() => signal.removeEventListener("abort", abort));
      }
      check(this.orders.get(outTradeNo));
    });
  }

  // --- connection --------------------------------------------------------------------

  async _connect() {
    this._setState("connecting");
    let ticket = this._ticket;
    if (this._tickets) this._ticket = null; // a given ticket is for the first connect
    try {
      if (!ticket) ticket = await this._tickets();
    } catch (error) {
      this._emit("error", error);
      return this._retry();
    }
    if (this._closed) return;
    const params = query({ ticket, last_event_id: this.lastEventId });
    const base = absolute(this._base);
    if (this._useSse && this._EventSource) this._openSse(`${base}/events?${params}`);
    else this._openWebSocket(`${base.replace(/^http/i, "ws")}/ws?${params}`);
  }

  _openWebSocket(url) {
    this.transport = "websocket";
    const socket = new this._WebSocket(url);
    this._socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this._opened();
    };
    socket.onmessage = (event) => this._receive(event.data);
    socket.onerror = () => {}; // onclose follows and says what to do
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      if (!opened && ++this._wsFailures >= this._options.wsAttemptsBeforeSse && this._EventSource) {
        this._useSse = true; // WebSocket cannot get through here (a proxy?): use SSE
      }
      this._lost(event.code, event.reason);
    };
  }

  _openSse(url) {
    this.transport = "sse";
    const source = new this._EventSource(url);
    this._socket = source;
    source.onopen = () => this._opened();
    source.onmessage = (event) => {
      if (event.lastEventId && /^\d+$/.test(event.lastEventId)) {
        this._resumeFrom(Number(event.lastEventId));
      }
      this._receive(event.data);
    };
    // EventSource retries by itself, but without our backoff, fresh ticket or resume
    // point: close it and reconnect ourselves.
    source.onerror = () => {
      if (this._socket !== source) return;
      this._lost(null, "sse error");
    };
  }

  _opened() {
    this._attempt = 0;
    this._wsFailures = 0;
    this._setState("open");
  }

  _lost(code, reason) {
    this._drop();
    if (this._closed) return;
    this._emit("error", new Error(`stream lost (${code ?? "no code"} ${reason || ""})`.trim()));
    if (code === CLOSE_TOKEN_EXPIRED && !this._tickets) {
      // The session expired and there is no way to a ticket of a new one.
      return this.close();
    }
    this._retry(code === CLOSE_TOKEN_EXPIRED ? 0 : undefined);
  }

  _retry(delayMs) {
    if (this._closed) return;
    const delay = delayMs ?? backoffDelay(this._attempt++, this._options, this._random);
    this._setState("waiting");
    this._timer = this._setTimeout(() => {
      this._timer = null;
      if (!this._closed) this._connect();
    }, delay);
  }

  _drop() {
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      // Not null: Node's `ws` emits "error" when a socket still connecting is closed,
      // and an "error" nobody listens to is an uncaught exception in the app.
      socket.onerror = () => {};
      try {
        socket.close();
      } catch {
        // already closed
      }
    }
  }

  // --- polling while the stream is down --------------------------------------------

  /** Polls `outTradeNo` while the stream is down, until the returned function is called. */
  _watch(outTradeNo) {
    this._watched.set(outTradeNo, (this._watched.get(outTradeNo) || 0) + 1);
    this._pollIfDown();
    let watching = true;
    return () => {
      if (!watching) return;
      watching = false;
      const left = this._watched.get(outTradeNo) - 1;
      if (left > 0) this._watched.set(outTradeNo, left);
      else this._watched.delete(outTradeNo);
      this._pollIfDown();
    };
  }

  /** Schedules the next poll while the stream is down and an order is waited for; stops
   * polling (and resets its backoff) once the stream is open. */
  _pollIfDown() {
    if (!this._poll) return;
    const down = this.state === "connecting" || this.state === "waiting";
    if (!down) this._pollAttempt = 0;
    if (!down || this._watched.size === 0) {
      if (this._pollTimer !== null) this._clearTimeout(this._pollTimer);
      this._pollTimer = null;
      return;
    }
    if (this._pollTimer !== null || this._polling) return;
    const delay = backoffDelay(this._pollAttempt++, this._poll, this._random);
    this._pollTimer = this._setTimeout(() => {
      this._pollTimer = null;
      this._pollOnce();
    }, delay);
  }

  async _pollOnce() {
    this._polling = true;
    try {
      await Promise.all([...this._watched.keys()].map((no) => this._pollOrder(no)));
    } finally {
      this._polling = false;
    }
    this._pollIfDown();
  }

  async _pollOrder(outTradeNo) {
    const { api, session } = this._poll;
    const fetchImpl = this._poll.fetch || globalThis.fetch;
    const what = `GET /orders/${outTradeNo}`;
    let view;
    try {
      const token = typeof session === "function" ? await session() : session;
      const response = await fetchImpl(
        `${absolute(api)}/orders/${encodeURIComponent(outTradeNo)}`,
        { headers: { Authorization: `Bearer ${token}` } },
      );
      if (!response.ok) {
        const error = new OrderPollError(response.status, `${what}: ${response.status}`);
        return this._emit("error", error);
      }
      view = await response.json();
    } catch (error) {
      return this._emit("error", new OrderPollError(0, `${what}: ${error && error.message}`));
    }
    if (!this._closed) this._applyPolled(view);
  }

  /** The order API's answer: applied when it moves the order on (never back), keeping the
   * time of the newest push, so that later pushes still apply. */
  _applyPolled(view) {
    if (!view || !view.out_trade_no || !(view.status in STATUS_RANK)) return;
    const current = this.orders.get(view.out_trade_no);
    if (current && current.status in STATUS_RANK) {
      if (STATUS_RANK[view.status] <= STATUS_RANK[current.status]) return;
    }
    const at = current ? current.at : 0;
    const next = { ...(current || {}), out_trade_no: view.out_trade_no, at };
    for (const field of ["status", "payment_status", "regenerate_count", "generation_id"]) {
      if (view[field] !== null && view[field] !== undefined) next[field] = view[field];
    }
    next.source = "poll";
    this.orders.set(view.out_trade_no, next);
    this._emit("order", next);
  }

  // --- messages ----------------------------------------------------------------------

  _receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return this._emit("error", new Error("unparsable message"));
    }
    if (message.type === "stream.closed") {
      // The notifier ends an SSE stream whose session expired: reconnect with a fresh ticket.
      return this._lost(CLOSE_TOKEN_EXPIRED, message.reason);
    }
    const key = dedupeKey(message);
    if (this._seen.has(key)) return;
    this._remember(key);
    this._resumeFrom(messageId(message));
    this._emit("message", message);
    this._apply(message);
  }

  _remember(key) {
    this._seen.add(key);
    if (this._seen.size > this._options.dedupeWindow) {
      this._seen.delete(this._seen.values().next().value);
    }
  }

  _resumeFrom(id) {
    if (id !== null && (this.lastEventId === null || id > this.lastEventId)) this.lastEventId = id;
  }

  /** Messages are state, not deltas: the newest (by `occurred_at`) wins, field by field
   * where a message leaves one `null`. */
  _apply(message) {
    if (!message.out_trade_no) return;
    const at = messageId(message) ?? 0;
    const current = this.orders.get(message.out_trade_no);
    if (current && at < current.at) return; // older than what we know (reordered)
    const next = { ...(current || {}), out_trade_no: message.out_trade_no, at };
    for (const field of [
      "status",
      "payment_status",
      "regenerate_count",
      "amount_refund",
      "generation_id",
      "reason",
    ]) {
      if (message[field] !== null && message[field] !== undefined) next[field] = message[field];
    }
    const changed =
      !current || Object.keys(next).some((k) => k !== "at" && k !== "source" && next[k] !== current[k]);
    if (changed) next.source = "push";
    this.orders.set(message.out_trade_no, next);
    if (changed) this._emit("order", next);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._pollIfDown();
    this._emit("state", state);
  }

  _emit(event, value) {
    for (const listener of [...(this._listeners.get(event) || [])]) {
      try {
        listener(value);
      } catch (error) {
        if (event !== "error") this._emit("error", error);
      }
    }
  }
}
