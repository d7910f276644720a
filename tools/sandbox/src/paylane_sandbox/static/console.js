// The sandbox console: polls the control API (/sandbox/…) every second and renders the
// orders, refunds and notifications; its buttons are the control API's operations.

const POLL_MS = 1000;
const $ = (selector) => document.querySelector(selector);

/** An element: h("td", {class: "x"}, "text", child, …); text is never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

async function control(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error(`${method} ${path}: ${data?.message || response.status}`);
  return data;
}

/** Run a control operation, show its error if any, and refresh at once. */
async function act(method, path, body) {
  try {
    await control(method, path, body);
    $("#error").textContent = "";
  } catch (error) {
    $("#error").textContent = error.message;
  }
  refresh();
}

const yuan = (fen) => (fen === null || fen === undefined ? "" : `¥${(fen / 100).toFixed(2)}`);
const time = (iso) => (iso ? iso.replace("T", " ").replace(/\+08:00$/, "") : "");
const badge = (text, cls = text) => h("span", { class: `badge ${cls}` }, text);
const enc = encodeURIComponent;

function orderRow(order) {
  const no = order.out_trade_no;
  const open = order.trade_state === "NOTPAY";
  const codeUrl = order.prepay?.code_url;
  return h(
    "tr",
    { "data-order": no },
    h("td", {}, h("code", {}, no), h("br"), h("span", { class: "empty" }, order.trade_type)),
    h("td", {}, yuan(order.amount_total)),
    h(
      "td",
      { "data-field": "trade_state" },
      badge(order.trade_state),
      order.expired && order.trade_state === "NOTPAY" ? [" ", badge("expired", "bad")] : null,
    ),
    h("td", {}, time(order.create_time), h("br"), h("span", { class: "empty" }, "expires ", time(order.time_expire) || "never")),
    h("td", {}, codeUrl ? h("img", { class: "qr", alt: `QR code of ${codeUrl}`, title: codeUrl, src: `/sandbox/qr?text=${enc(codeUrl)}` }) : null),
    h(
      "td",
      {},
      h("button", { class: "primary", "data-action": "pay", disabled: !open || order.expired, onclick: () => act("POST", `/sandbox/orders/${enc(no)}/pay`, {}) }, "Pay"),
      " ",
      h("button", { "data-action": "fail", disabled: !open, onclick: () => act("POST", `/sandbox/orders/${enc(no)}/fail`) }, "Fail"),
      " ",
      h("button", { "data-action": "expire", disabled: !open || order.expired, onclick: () => act("POST", `/sandbox/orders/${enc(no)}/expire`) }, "Expire"),
      " ",
      h("button", { "data-action": "late-pay", disabled: open && !order.expired, title: "pay anyway (late, again, or despite a failure)", onclick: () => act("POST", `/sandbox/orders/${enc(no)}/pay`, { force: true }) }, "Force pay"),
    ),
  );
}

function refundRow(refund) {
  const no = refund.out_refund_no;
  const open = refund.status === "PROCESSING" || refund.status === "ABNORMAL";
  const complete = (status) => () => act("POST", `/sandbox/refunds/${enc(no)}/complete`, { status });
  return h(
    "tr",
    { "data-refund": no },
    h("td", {}, h("code", {}, no)),
    h("td", {}, h("code", {}, refund.out_trade_no)),
    h("td", {}, yuan(refund.amount?.refund), " of ", yuan(refund.amount?.total)),
    h("td", {}, badge(refund.status)),
    h("td", {}, time(refund.create_time)),
    h(
      "td",
      {},
      h("button", { class: "primary", "data-action": "refund-success", disabled: !open, onclick: complete("SUCCESS") }, "Succeed"),
      " ",
      h("button", { "data-action": "refund-abnormal", disabled: refund.status !== "PROCESSING", onclick: complete("ABNORMAL") }, "Abnormal"),
      " ",
      h("button", { class: "danger", "data-action": "refund-close", disabled: !open, onclick: complete("CLOSED") }, "Close"),
    ),
  );
}

function notificationRow(note) {
  const state = note.dropped
    ? badge("dropped", "bad")
    : note.held
      ? badge("held", "wait")
      : note.delivered
        ? badge("delivered", "ok")
        : note.finished
          ? badge("gave up", "bad")
          : badge("retrying", "wait");
  const attempts = note.attempts.map((a) =>
    h("li", {}, `${time(a.at)} `, a.copy ? `copy ${a.copy} ` : "", a.error ? badge(a.error, "bad") : a.status === null ? badge("in flight", "wait") : badge(String(a.status), [200, 204].includes(a.status) ? "ok" : "bad")),
  );
  return h(
    "tr",
    { "data-notification": note.id },
    h("td", {}, h("code", {}, note.event_type), note.probe ? [" ", badge("SIGNTEST")] : null, h("br"), h("span", { class: "empty mono" }, note.id)),
    h("td", {}, h("code", {}, note.out_refund_no || note.out_trade_no || "")),
    h("td", {}, state),
    h("td", {}, h("span", { class: "mono" }, note.url), h("ul", { class: "attempts" }, attempts.length ? attempts : h("li", {}, "no attempt yet"))),
  );
}

function table(selector, head, rows, empty) {
  const el = $(selector);
  el.replaceChildren(
    h("tr", {}, head.map((title) => h("th", {}, title))),
    ...(rows.length ? rows : [h("tr", {}, h("td", { class: "empty", colspan: head.length }, empty))]),
  );
}

const shown = {};
/** Re-render a part only when what it shows changed, so buttons stay put between polls. */
function render(part, data, draw) {
  const key = JSON.stringify(data);
  if (shown[part] === key) return;
  shown[part] = key;
  draw(data);
}

function drawSwitches(switches) {
  $("#duplicate").value = switches.duplicate;
  $("#delay").value = switches.delay_s;
  $("#reorder").checked = switches.reorder;
  const parts = [];
  if (switches.drop_next) parts.push(`dropping the next ${switches.drop_next}`);
  if (switches.held) parts.push(`${switches.held} held`);
  $("#switch-state").textContent = parts.join(" · ");
}

let polling = null;
async function refresh() {
  clearTimeout(polling);
  try {
    const [orders, refunds, notes, switches] = await Promise.all([
      control("GET", "/sandbox/orders"),
      control("GET", "/sandbox/refunds"),
      control("GET", "/sandbox/notifications"),
      control("GET", "/sandbox/switches"),
    ]);
    const held = notes.notifications.filter((n) => n.held).length;
    render("switches", { ...switches, held }, drawSwitches);
    render("orders", orders.orders, (list) =>
      table("#orders", ["order", "amount", "state", "created", "QR", ""], [...list].reverse().map(orderRow), "No order yet: place one through the order API or the checkout demo."),
    );
    render("refunds", refunds.refunds, (list) =>
      table("#refunds", ["refund", "order", "amount", "status", "created", ""], [...list].reverse().map(refundRow), "No refund yet."),
    );
    render("notifications", notes.notifications, (list) =>
      table("#notifications", ["event", "order / refund", "state", "delivery attempts"], [...list].reverse().map(notificationRow), "No notification yet."),
    );
  } catch (error) {
    $("#error").textContent = `sandbox unreachable: ${error.message}`;
  }
  polling = setTimeout(refresh, POLL_MS);
}

function wireSwitches() {
  const put = (patch) => act("PUT", "/sandbox/switches", patch);
  document.querySelector('[data-switch="drop"]').addEventListener("click", async () => {
    const current = await control("GET", "/sandbox/switches");
    put({ drop_next: current.drop_next + 1 });
  });
  $("#duplicate").addEventListener("change", (e) => put({ duplicate: Number(e.target.value) }));
  $("#delay").addEventListener("change", (e) => put({ delay_s: Number(e.target.value) }));
  $("#reorder").addEventListener("change", (e) => put({ reorder: e.target.checked }));
  document.querySelector('[data-switch="flush"]').addEventListener("click", () => act("POST", "/sandbox/notifications/flush"));
  document.querySelector('[data-switch="reset"]').addEventListener("click", () => {
    if (confirm("Forget every order, refund and notification?")) act("POST", "/sandbox/reset");
  });
}

async function showInfo() {
  const info = await control("GET", "/sandbox/info");
  $("#info").textContent = `mchid ${info.mchid} · signs as ${info.sign_mode} · refunds ${info.refund_mode} · time ×${info.time_factor}`;
}

wireSwitches();
showInfo().catch(() => {});
refresh();
