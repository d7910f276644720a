// Forwards WeChat Cloud Development's payment callbacks to paylane's internal notify
// (POST /api/payment/internal/notify on ingress, X-Internal-Secret: INTERNAL_API_SECRET).
// CommonJS, no dependencies: copy it into a cloud function (Node 18 or later: fetch).
// docs/cloud-function.md, "Cloud development: forwarding the payment callback".
//
// What paylane is told is a claim: its order service asks WeChat Pay about the order
// before anything is granted, whatever the callback said.
'use strict'

/** ``yyyyMMddHHmmss`` (China time) as RFC 3339, or undefined. */
function chinaTime(text) {
  const t = String(text || '')
  if (!/^\d{14}$/.test(t)) return undefined
  return `${t.slice(0, 4)}-${t.slice(4, 6)}-${t.slice(6, 8)}T${t.slice(8, 10)}:${t.slice(10, 12)}:${t.slice(12, 14)}+08:00`
}

/** The v2 ``cloud.cloudPay`` callback (camelCase; snake_case too): the notify's body, or
 * null for a result that is no payment. */
function fromCloudPay(event) {
  const get = (camel, snake) => event[camel] ?? event[snake]
  if ((get('returnCode', 'return_code') || 'SUCCESS') !== 'SUCCESS') return null
  if ((get('resultCode', 'result_code') || 'SUCCESS') !== 'SUCCESS') return null
  return {
    outTradeNo: get('outTradeNo', 'out_trade_no'),
    transactionId: get('transactionId', 'transaction_id'),
    status: 'paid',
    amountTotal: Number(get('totalFee', 'total_fee')) || undefined,
    openid: get('subOpenid', 'sub_openid') || get('openid', 'openid') || undefined,
    successTime: chinaTime(get('timeEnd', 'time_end')),
  }
}

/** The V3 cloud template's event (the v3 envelope, ``resource`` already decrypted): the
 * notify's body, or null for what is no successful payment. */
function fromV3Template(event) {
  const r = event.resource || {}
  if (event.event_type !== 'TRANSACTION.SUCCESS' || (r.trade_state || 'SUCCESS') !== 'SUCCESS') {
    return null
  }
  return {
    outTradeNo: r.out_trade_no,
    transactionId: r.transaction_id,
    status: 'paid',
    amountTotal: (r.amount && r.amount.total) || undefined,
    openid: (r.payer && r.payer.openid) || undefined,
    successTime: r.success_time,
  }
}

/** POSTs the body to paylane's internal notify; true once paylane confirmed it (200
 * ``success``: the payment is durably queued). */
async function forward(body, options = {}) {
  const base = options.url || process.env.PAYLANE_INGRESS_URL
  const secret = options.secret || process.env.INTERNAL_API_SECRET
  const response = await fetch(`${base.replace(/\/$/, '')}/api/payment/internal/notify`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Internal-Secret': secret },
    body: JSON.stringify(body),
  })
  const answer = await response.json().catch(() => ({}))
  return response.status === 200 && answer.success === true
}

/** The ``cloud.cloudPay`` callback function: ``{errcode: 0}`` once paylane has it, else a
 * non-zero errcode, and WeChat calls it again. */
async function cloudPayCallback(event, options) {
  const body = fromCloudPay(event)
  if (body === null) return { errcode: 0, errmsg: 'not a payment: ignored' }
  try {
    if (await forward(body, options)) return { errcode: 0, errmsg: 'ok' }
  } catch (err) {
    return { errcode: -1, errmsg: `paylane unreachable: ${err.message}` }
  }
  return { errcode: -1, errmsg: 'paylane did not take it: retry' }
}

/** The V3 template's callback function: returns the event once paylane has it; throws
 * otherwise (the template's way of saying "failed, deliver again"). */
async function v3TemplateCallback(event, options) {
  const body = fromV3Template(event)
  if (body !== null && !(await forward(body, options))) {
    throw new Error('paylane did not take the payment: retry')
  }
  return event
}

module.exports = { chinaTime, fromCloudPay, fromV3Template, forward, cloudPayCallback, v3TemplateCallback }
