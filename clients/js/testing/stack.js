// Calls to a running paylane stack, for the tests against the real notifier: a user signs
// in (a login code from the sandbox, as wx.login() gives one), places a NATIVE order,
// and the payer pays it in the sandbox.

export const stack = {
  orderApi: process.env.PAYLANE_ORDER_API_URL,
  notifier: process.env.PAYLANE_NOTIFIER_URL,
  sandbox: process.env.PAYLANE_SANDBOX_URL,
};

/** Why the stack tests cannot run here, or null when they can. */
export function missingStack() {
  const unset = Object.entries({
    PAYLANE_ORDER_API_URL: stack.orderApi,
    PAYLANE_NOTIFIER_URL: stack.notifier,
    PAYLANE_SANDBOX_URL: stack.sandbox,
  }).filter(([, value]) => !value);
  return unset.length ? `no stack: ${unset.map(([name]) => name).join(", ")} unset` : null;
}

async function call(method, url, body, headers = {}) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${url}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** A new user's session token. */
export async function signIn(openid = `o-js-${Date.now()}-${Math.random().toString(36).slice(2)}`) {
  const { code } = await call("POST", `${stack.sandbox}/sandbox/miniprogram/codes`, { openid });
  const { token } = await call("POST", `${stack.orderApi}/auth/miniprogram`, { code });
  return token;
}

/** The order API's answer to a NATIVE order of `packageType`. */
export function placeOrder(token, packageType = "basic") {
  return call(
    "POST",
    `${stack.orderApi}/orders`,
    { package_type: packageType, trade_type: "NATIVE" },
    { Authorization: `Bearer ${token}` },
  );
}

/** The payer pays; `{notify: false}`: WeChat Pay's notification is never sent. */
export function pay(outTradeNo, options = {}) {
  return call(
    "POST",
    `${stack.sandbox}/sandbox/orders/${encodeURIComponent(outTradeNo)}/pay`,
    options,
  );
}
