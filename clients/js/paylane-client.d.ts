// Types of paylane-client.js (a plain ES module; no build step).

/** One message of the notifier (services/notifier: messages.py), `null` where its source has no such field. */
export interface PushMessage {
  type:
    | "order.paid"
    | "order.refunded"
    | "order.failed"
    | "entitlement.granted"
    | "entitlement.revoked"
    | "fulfilment.succeeded"
    | "fulfilment.failed"
    | "order.state";
  out_trade_no: string | null;
  /** The order's status as the client should see it. */
  status: "pending" | "paid" | "failed" | "refunded" | "needs_review" | null;
  payment_status: string | null;
  regenerate_count: number | null;
  amount_refund: number | null;
  generation_id: string | null;
  /** `order.failed`: why the order ended unpaid. */
  reason: "closed" | "expired" | "failed" | null;
  /** Null for the on-connect snapshot's `order.state` messages. */
  event_id: string | null;
  /** ISO 8601 UTC; its milliseconds since the epoch are the message's id. */
  occurred_at: string;
}

/** What the client knows of one order: the newest message's fields, merged. */
export interface OrderState {
  out_trade_no: string;
  status?: PushMessage["status"];
  payment_status?: string;
  regenerate_count?: number;
  amount_refund?: number;
  generation_id?: string;
  /** Why a failed order ended unpaid (from its `order.failed` push). */
  reason?: PushMessage["reason"];
  /** What gave the latest state: a message of the stream, or a poll of the order API. */
  source?: "push" | "poll";
  /** Milliseconds since the epoch of the newest message applied (a poll keeps it). */
  at: number;
}

/** The part of the browser's WebSocket the client uses. */
export interface WebSocketLike {
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The part of the browser's EventSource the client uses. */
export interface EventSourceLike {
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: string; lastEventId?: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** The part of a mini-program's `wx` the adapter uses (`wx.connectSocket` and its SocketTask). */
export interface WxSocketTask {
  onOpen(callback: (res: unknown) => void): void;
  onMessage(callback: (res: { data: string | ArrayBuffer }) => void): void;
  onClose(callback: (res: { code: number; reason: string }) => void): void;
  onError(callback: (res: { errMsg: string }) => void): void;
  send(options: { data: string | ArrayBuffer }): void;
  close(options: { code?: number; reason?: string }): void;
}
export interface WxLike {
  connectSocket(options: { url: string; fail?: (err: { errMsg: string }) => void }): WxSocketTask;
}

export interface BackoffOptions {
  /** First reconnect delay's ceiling (ms); default 500. */
  initialDelayMs?: number;
  /** Largest delay (ms); default 30000. */
  maxDelayMs?: number;
  /** Growth per attempt; default 2. */
  factor?: number;
}

/** Polling the order API (`GET /orders/{no}`) while the stream is down. */
export interface PollOptions extends BackoffOptions {
  /** The order API's base URL. */
  api: string;
  /** The user's session token, or a function giving the current one. */
  session: string | (() => string | Promise<string>);
  /** How long `waitUntilPaid` waits at most (ms); default 300000 (5 minutes). */
  timeoutMs?: number;
  /** Default: `globalThis.fetch`. */
  fetch?: (url: string, init: { headers: Record<string, string> }) => Promise<{
    ok: boolean;
    status: number;
    json(): Promise<any>;
  }>;
}

export interface PaylaneClientOptions {
  /** The notifier's base URL (`https://api.example.com/notifier`, or `/path` in a browser page). */
  url: string;
  /** A stream ticket for the first connect (the `stream_ticket` of POST /orders). Without
   * `tickets` it is used for every connect, which works only while it lives (a minute). */
  ticket?: string;
  /** Gives a fresh stream ticket; called before every connect that `ticket` does not open
   * (reconnects, SSE's Last-Event-ID resume included). Usually `streamTickets({api, session})`.
   * A session token is never a ticket: the notifier refuses it. */
  tickets?: () => string | Promise<string>;
  /** Default: `globalThis.WebSocket`; in a mini-program `miniProgramWebSocket(wx)`; `null`: SSE only. */
  WebSocket?: WebSocketConstructor | null;
  /** Default: `globalThis.EventSource`; `null`: no SSE fallback. */
  EventSource?: EventSourceConstructor | null;
  backoff?: BackoffOptions;
  /** WebSocket attempts that never opened before switching to SSE; default 2. */
  wsAttemptsBeforeSse?: number;
  /** Poll the orders waited for while the stream is down (backoff defaults: 2000 ms
   * growing by 1.5 up to 15000 ms). */
  poll?: PollOptions;
  /** For tests: the randomness of the jitter and the timers. */
  random?: () => number;
  setTimeout?: (callback: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

export interface StreamTicketsOptions {
  /** The order API's base URL (`https://api.example.com/order`, or `/path` in a browser page). */
  api: string;
  /** The user's session token, or a function giving the current one. */
  session: string | (() => string | Promise<string>);
  /** Default: `globalThis.fetch`. */
  fetch?: (url: string, init: { method: string; headers: Record<string, string> }) => Promise<{
    ok: boolean;
    status: number;
    json(): Promise<any>;
  }>;
}

/** A stream ticket could not be had (`status` 401: the session expired or was revoked; 0: unreachable). */
export class StreamTicketError extends Error {
  status: number;
}

/** A `tickets` function: `POST {api}/stream-tickets` with the session, each call a fresh ticket. */
export function streamTickets(options: StreamTicketsOptions): () => Promise<string>;

/** The notifier closes a stream whose session expired (WebSocket close code; SSE `stream.closed`). */
export const CLOSE_TOKEN_EXPIRED: 4401;
export const CLOSE_TOO_MANY_FOR_USER: 4429;
export const CLOSE_FULL: 1013;

export class OrderNotPaidError extends Error {
  state: OrderState;
}

/** `waitUntilPaid` saw no final state within its timeout. */
export class OrderWaitTimeoutError extends Error {
  outTradeNo: string;
  timeoutMs: number;
}

/** A poll's answer was an error (`status`; 0: the order API could not be reached). */
export class OrderPollError extends Error {
  status: number;
}

export function backoffDelay(
  attempt: number,
  options: Required<BackoffOptions>,
  random?: () => number,
): number;
export function messageId(message: { occurred_at?: string | null }): number | null;
export function miniProgramWebSocket(wx: WxLike): WebSocketConstructor;

export class PaylaneClient {
  constructor(options: PaylaneClientOptions);
  /** Each order's latest state, by `out_trade_no`. */
  readonly orders: Map<string, OrderState>;
  readonly transport: "websocket" | "sse" | null;
  readonly state: "idle" | "connecting" | "open" | "waiting" | "closed";
  /** The newest message id seen (ms since the epoch): where a reconnect resumes. */
  readonly lastEventId: number | null;
  start(): this;
  close(): void;
  on(event: "message", listener: (message: PushMessage) => void): () => void;
  on(event: "order", listener: (state: OrderState) => void): () => void;
  on(event: "state", listener: (state: PaylaneClient["state"]) => void): () => void;
  on(event: "error", listener: (error: Error) => void): () => void;
  waitUntilPaid(
    outTradeNo: string,
    options?: { signal?: AbortSignal; timeoutMs?: number },
  ): Promise<OrderState>;
}
