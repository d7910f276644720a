// The checkout demo: a paying web client. It signs in (a login code the sandbox hands out,
// as wx.login() would), places a NATIVE order through the order API, shows the QR code,
// and waits for the payment's push through the notifier with paylane-client.js.
// The order API and the notifier are reached through the sandbox's same-origin proxy.

import { PaylaneClient, streamTickets } from "/paylane-client.js";

const ORDER_API = "/checkout/api";
const NOTIFIER = "/checkout/notifier";
const $ = (selector) => document.querySelector(selector);

async function call(method, url, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error(data?.message || `${method} ${url}: ${response.status}`);
  return data;
}

let session = null;
/** A session token of this page's user (a new sandbox payer per page load). */
async function signIn() {
  if (session) return session;
  const openid = `o-checkout-${crypto.randomUUID().slice(0, 12)}`;
  const { code } = await call("POST", "/sandbox/miniprogram/codes", { openid });
  session = (await call("POST", `${ORDER_API}/auth/miniprogram`, { code })).token;
  return session;
}

function showPackages(prices) {
  const list = $("#packages");
  list.replaceChildren();
  for (const [name, fen] of Object.entries(prices.packages_fen)) {
    const grant = prices.grants?.[name];
    const card = document.createElement("div");
    card.className = "package";
    card.dataset.package = name;
    card.innerHTML = `<h3></h3><div class="price"></div><p class="empty"></p><button class="primary">Buy</button>`;
    card.querySelector("h3").textContent = name;
    card.querySelector(".price").textContent = `¥${(fen / 100).toFixed(2)}`;
    card.querySelector("p").textContent = grant
      ? `plan ${grant.payment_status}, ${grant.regenerate_count} regenerations`
      : "";
    card.querySelector("button").addEventListener("click", () => buy(name));
    list.append(card);
  }
}

let client = null;
async function buy(packageType) {
  $("#error").textContent = "";
  for (const button of document.querySelectorAll(".package button")) button.disabled = true;
  try {
    const token = await signIn();
    const order = await call(
      "POST",
      `${ORDER_API}/orders`,
      { package_type: packageType, trade_type: "NATIVE" },
      token,
    );
    showOrder(order);
    await watch(order);
  } catch (error) {
    $("#error").textContent = error.message;
  } finally {
    for (const button of document.querySelectorAll(".package button")) button.disabled = false;
  }
}

function showOrder(order) {
  $("#order").hidden = false;
  $("#out-trade-no").textContent = order.out_trade_no;
  $("#amount").textContent = `¥${(order.amount_total / 100).toFixed(2)}`;
  $("#qr").src = `/sandbox/qr?text=${encodeURIComponent(order.pay.code_url)}`;
  $("#qr").title = order.pay.code_url;
  setStatus("pending", "Waiting for payment…");
  $("#plan").textContent = "";
}

function setStatus(status, text) {
  $("#status").dataset.status = status;
  $("#status").textContent = text;
}

async function watch(order) {
  client?.close();
  // The order's stream ticket opens the stream; a reconnect asks the order API for a
  // fresh one with the session (the notifier takes tickets, never the session itself).
  client = new PaylaneClient({
    url: NOTIFIER,
    ticket: order.stream_ticket,
    tickets: streamTickets({ api: ORDER_API, session: order.client_token }),
  });
  client.on("state", (state) => {
    $("#connection").textContent =
      state === "open" ? `live over ${client.transport === "sse" ? "SSE" : "WebSocket"}` : state;
  });
  client.on("order", (state) => {
    if (state.out_trade_no === order.out_trade_no && state.payment_status) {
      $("#plan").textContent = `Your plan: ${state.payment_status}, ${state.regenerate_count} regenerations`;
    }
  });
  client.start();
  try {
    await client.waitUntilPaid(order.out_trade_no);
    setStatus("paid", "Paid ✓");
  } catch (error) {
    if (error.name === "OrderNotPaidError") setStatus(error.state.status, `Not paid: ${error.state.status}`);
  }
}

call("GET", `${ORDER_API}/prices/current`)
  .then(showPackages)
  .catch((error) => {
    $("#packages").textContent = `Prices unavailable: ${error.message}`;
  });
