"""The operators' console's HTML (``console.py``): server-rendered pages, every value
escaped, no script. Each form that changes something carries the session's CSRF token."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from paylane_common.broker.replay import DeadLetter

from .console_data import Event, Health
from .console_dlq import DlqView
from .operators import Session

STATUSES = ("pending", "paid", "failed", "refunded", "needs_review")
SEARCH_FIELDS = (
    ("out_trade_no", "out_trade_no"),
    ("transaction_id", "transaction_id"),
    ("openid", "openid"),
    ("user_id", "user id"),
    ("external_id", "external id"),
    ("amount", "amount (yuan)"),
)

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{background:#1d3557;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#fff} header form{margin-left:auto} main{padding:16px}
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #ddd;padding:4px 6px;
text-align:left;vertical-align:top} th{background:#f3f3f3}
.notice{padding:8px;margin:8px 0;border-radius:4px} .ok{background:#e6f4ea} .bad{background:#fde8e8}
form.search{display:flex;flex-wrap:wrap;gap:8px;align-items:end}
label{display:flex;flex-direction:column}
section{margin:16px 0} .actions form{border:1px solid #ddd;padding:8px;margin:8px 0}
code{font-size:12px}
"""


def _order_link(out_trade_no: str | None) -> str:
    """A link to the order's page; nothing for a row that names no order."""
    if not out_trade_no:
        return ""
    return f'<a href="/console/orders/{_t(out_trade_no)}">{_t(out_trade_no)}</a>'


def _t(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    return escape(str(value))


def _csrf(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(session.csrf_token)}">'


def layout(title: str, body: str, session: Session | None = None) -> str:
    nav = ""
    if session is not None:
        who = f"{escape(session.operator.name)} ({escape(session.operator.role)})"
        nav = (
            '<a href="/console/orders">Orders</a><a href="/console/health">Health</a>'
            '<a href="/console/dlq">Dead letters</a><a href="/console/audit">Audit log</a>'
            f'<form method="post" action="/console/sign-out"><span id="operator">{who}</span> '
            f"{_csrf(session)}<button>Sign out</button></form>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · paylane console</title><style>{STYLE}</style></head>"
        f"<body><header><strong>paylane console</strong>{nav}</header>"
        f"<main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def notice(text: str | None, ok: bool) -> str:
    if not text:
        return ""
    return f'<p id="notice" class="notice {"ok" if ok else "bad"}">{escape(text)}</p>'


def sign_in_page(csrf: str, error: str | None = None) -> str:
    body = (
        notice(error, False) + '<form method="post" action="/console/sign-in">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<label>Name <input name="name" id="name" autocomplete="username" required></label>'
        '<label>Password <input name="password" id="password" type="password"'
        ' autocomplete="current-password" required></label>'
        '<button id="sign-in">Sign in</button></form>'
    )
    return layout("Sign in", body)


def orders_page(
    session: Session,
    query: Mapping[str, str],
    rows: list[dict[str, Any]],
    next_cursor: str | None,
    error: str | None = None,
) -> str:
    fields = "".join(
        f'<label>{escape(label)}<input name="{name}" value="{escape(query.get(name, ""))}"></label>'
        for name, label in SEARCH_FIELDS
    )
    chosen = query.get("status", "")
    options = '<option value="">any</option>' + "".join(
        f"<option{' selected' if s == chosen else ''}>{s}</option>" for s in STATUSES
    )
    fields += f'<label>status<select name="status">{options}</select></label>'
    for name in ("from", "to"):
        value = escape(query.get(name, ""))
        fields += (
            f'<label>{name}<input name="{name}" placeholder="2024-05-01" value="{value}"></label>'
        )
    filters = {k: v for k, v in query.items() if v and k not in ("cursor", "limit")}
    export = "/console/orders/export.csv?" + urlencode(filters)
    body = (
        notice(error, False)
        + f'<form class="search" method="get" action="/console/orders">{fields}'
        '<button id="search">Search</button></form>'
        f'<p><a id="export" href="{escape(export)}">Export these as CSV</a></p>'
    )
    lines = "".join(
        f'<tr data-order="{_t(r["out_trade_no"])}">'
        f'<td><a href="/console/orders/{_t(r["out_trade_no"])}">{_t(r["out_trade_no"])}</a></td>'
        f"<td>{_t(r['user_id'])}</td><td>{_t(r['package_type'])}</td>"
        f"<td>{_yuan(r['amount_total'])}</td><td>{_t(r['status'])}</td>"
        f"<td>{_t(r['transaction_id'])}</td><td>{_t(r['created_at'])}</td></tr>"
        for r in rows
    )
    body += (
        '<table id="orders"><tr><th>out_trade_no</th><th>user</th><th>package</th>'
        f"<th>amount</th><th>status</th><th>transaction_id</th><th>created</th></tr>{lines}</table>"
    )
    if not rows:
        body += "<p>No orders match.</p>"
    if next_cursor:
        more = urlencode({**filters, "cursor": next_cursor})
        body += f'<p><a id="next" href="/console/orders?{escape(more)}">Older orders</a></p>'
    return layout("Orders", body, session)


def _yuan(fen: Any) -> str:
    return "" if fen is None else f"{int(fen) / 100:.2f}" if isinstance(fen, int) else _t(fen)


def _definition(rows: Iterable[tuple[str, Any]]) -> str:
    return (
        "<table class='facts'>"
        + "".join(
            f'<tr><th>{escape(k)}</th><td data-field="{escape(k)}">{_t(v)}</td></tr>'
            for k, v in rows
        )
        + "</table>"
    )


def order_page(
    session: Session,
    order: dict[str, Any],
    refunds: list[dict[str, Any]],
    refundable: int,
    events: list[Event],
    deliveries: list[dict[str, Any]],
    message: str | None = None,
    ok: bool = True,
    letters: Sequence[tuple[str, DeadLetter]] = (),
) -> str:
    no = order["out_trade_no"]
    facts = _definition(
        [
            ("out_trade_no", no),
            ("status", order["status"]),
            ("review_reason", order.get("review_reason")),
            ("amount", _yuan(order.get("amount_total"))),
            ("refunded", _yuan(order.get("amount_refunded"))),
            ("refundable", _yuan(refundable)),
            ("package_type", order.get("package_type")),
            ("trade_type", order.get("trade_type")),
            ("user_id", order.get("user_id")),
            ("openid", order.get("_openid") or order.get("user_openid")),
            ("transaction_id", order.get("transaction_id")),
            ("external_id", order.get("external_id")),
            ("fulfilment_status", order.get("fulfilment_status")),
            ("created_at", order.get("created_at")),
        ]
    )
    refund_rows = "".join(
        f'<tr data-refund="{_t(r["out_refund_no"])}"><td>{_t(r["out_refund_no"])}</td>'
        f"<td>{_yuan(r['amount_refund'])}</td><td>{_t(r['status'])}</td><td>{_t(r['reason'])}</td>"
        f"<td>{_t(r['created_at'])}</td><td>{_t(r['refunded_at'])}</td></tr>"
        for r in refunds
    )
    refund_table = (
        '<table id="refunds"><tr><th>out_refund_no</th><th>amount</th><th>status</th>'
        f"<th>reason</th><th>requested</th><th>refunded</th></tr>{refund_rows}</table>"
        if refunds
        else "<p>No refunds.</p>"
    )
    delivery_rows = "".join(
        f'<tr data-delivery="{_t(d["id"])}"><td>{_t(d["id"])}</td><td>{_t(d["event_type"])}</td>'
        f"<td>{_t(d['url'])}</td><td>{_t(d['status'])}</td><td>{_t(d['attempts'])}</td>"
        f"<td>{_t(d['last_status'])} {_t(d['last_error'])}</td>"
        f"<td>{_resend(session, no, d)}</td></tr>"
        for d in deliveries
    )
    delivery_table = (
        '<table id="deliveries"><tr><th>delivery</th><th>event</th><th>endpoint</th>'
        "<th>status</th><th>attempts</th><th>last answer</th><th></th></tr>"
        f"{delivery_rows}</table>"
        if deliveries
        else "<p>No webhook deliveries.</p>"
    )
    event_rows = "".join(
        f'<tr data-origin="{escape(e.origin)}"><td>{_t(e.at)}</td><td>{escape(e.origin)}</td>'
        f'<td class="what">{escape(e.what)}</td><td><code>{escape(e.detail)}</code></td></tr>'
        for e in events
    )
    body = (
        notice(message, ok)
        + facts
        + _actions(session, order, refundable)
        + f"<section><h2>Refunds</h2>{refund_table}</section>"
        + f"<section><h2>Webhook deliveries</h2>{delivery_table}</section>"
        + _order_letters(session, no, letters)
        + '<section><h2>Timeline</h2><table id="timeline"><tr><th>when (UTC)</th><th>from</th>'
        f"<th>what</th><th>detail</th></tr>{event_rows}</table></section>"
    )
    return layout(f"Order {no}", body, session)


def _reason_field() -> str:
    return (
        '<label>reason <input name="reason" required minlength="3" maxlength="200"'
        ' placeholder="why (kept in the audit log)"></label>'
    )


def _action(session: Session, no: str, action: str, title: str, extra: str = "") -> str:
    return (
        f'<form method="post" action="/console/orders/{escape(no)}/{action}" id="{action}-form">'
        f"<strong>{escape(title)}</strong> {_csrf(session)}{extra}{_reason_field()}"
        f'<button id="{action}">{escape(title)}</button></form>'
    )


def _resend(session: Session, no: str, delivery: dict[str, Any]) -> str:
    """A delivery's resend form (support and admin; its endpoint enabled)."""
    if not session.operator.may_act or delivery["endpoint_status"] != "enabled":
        return ""
    hidden = f'<input type="hidden" name="delivery_id" value="{_t(delivery["id"])}">'
    return (
        f'<form method="post" action="/console/orders/{escape(no)}/resend-webhook"'
        f' id="resend-{_t(delivery["id"])}">{_csrf(session)}{hidden}{_reason_field()}'
        "<button>Resend</button></form>"
    )


def _letter_cells(dlq: str, letter: DeadLetter) -> str:
    no = letter.correlation_id
    order = f'<a href="/console/orders/{_t(no)}">{_t(no)}</a>' if no else ""
    return (
        f"<td>{_t(dlq)}</td><td><code>{_t(letter.message_id)}</code></td><td>{_t(letter.type)}</td>"
        f"<td>{order}</td><td><code>{_t(letter.reason)}</code></td><td>{_t(letter.failed_at)}</td>"
        f"<td>{letter.replayed}</td>"
    )


_LETTER_HEAD = (
    "<tr><th>DLQ</th><th>message id</th><th>type (routing key)</th><th>out_trade_no</th>"
    "<th>why dead-lettered</th><th>when</th><th>replays</th><th></th></tr>"
)


def _replay_form(session: Session, action: str, hidden: Mapping[str, str], title: str) -> str:
    if not session.operator.may_act:
        return ""
    fields = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in hidden.items()
    )
    return (
        f'<form method="post" action="{escape(action)}">{_csrf(session)}{fields}'
        f"{_reason_field()}<button>{escape(title)}</button></form>"
    )


def _order_letters(session: Session, no: str, letters: Sequence[tuple[str, DeadLetter]]) -> str:
    """An order's dead letters (those of the order service's DLQs about it)."""
    if not letters:
        return '<section><h2>Dead letters</h2><p id="dead-letters">None.</p></section>'
    rows = "".join(
        f'<tr data-letter="{_t(letter.message_id)}">{_letter_cells(dlq, letter)}<td>'
        + (
            _replay_form(
                session,
                f"/console/orders/{no}/replay-dead-letter",
                {"queue": dlq, "message_id": letter.message_id},
                "Replay",
            )
            if letter.message_id
            else ""
        )
        + "</td></tr>"
        for dlq, letter in letters
    )
    return (
        f'<section><h2>Dead letters</h2><table id="dead-letters">{_LETTER_HEAD}{rows}</table>'
        "</section>"
    )


def dlq_page(
    session: Session, views: Sequence[DlqView], message: str | None = None, ok: bool = True
) -> str:
    """Every DLQ's depth; the first dead letters of the order service's own, each with a
    replay (support, admin), and a replay of all (admin)."""
    sections = []
    for view in views:
        depth = "?" if view.messages is None else str(view.messages)
        head = f'<h2 data-dlq="{escape(view.name)}">{escape(view.name)}: {depth}</h2>'
        if not view.own:
            body = (
                f"<p>Replayed with <code>paylane replay dlq {escape(view.name)}</code> under"
                " the administrator's broker identity, not from here.</p>"
            )
        elif view.letters is None:
            body = f"<p>Not read: {escape(view.error or 'no broker connection')}.</p>"
        else:
            rows = "".join(
                f'<tr data-letter="{_t(letter.message_id)}">{_letter_cells(view.name, letter)}<td>'
                # A letter without a message id cannot be named: only "all" moves it.
                + (
                    _replay_form(
                        session,
                        f"/console/dlq/{view.name}/replay",
                        {"message_id": letter.message_id},
                        "Replay",
                    )
                    if letter.message_id
                    else ""
                )
                + "</td></tr>"
                for letter in view.letters
            )
            every = (
                _replay_form(
                    session,
                    f"/console/dlq/{view.name}/replay",
                    {"all": "1"},
                    f"Replay all of {view.name}",
                )
                if session.operator.role == "admin" and view.letters
                else ""
            )
            body = f"<table>{_LETTER_HEAD}{rows}</table>{every}" if rows else "<p>Empty.</p>"
        sections.append(f"<section>{head}{body}</section>")
    return layout("Dead letters", notice(message, ok) + "".join(sections), session)


def _actions(session: Session, order: dict[str, Any], refundable: int) -> str:
    if not session.operator.may_act:
        return '<p id="read-only">Your role reads only: no actions.</p>'
    no, status = order["out_trade_no"], order["status"]
    forms = []
    if status in ("paid", "needs_review") and refundable > 0:
        title = "Refund" if status == "paid" else "Resolve by refund"
        amount = (
            '<label>amount in yuan (empty: all that is refundable) <input name="amount"'
            f' placeholder="{_yuan(refundable)}"></label>'
        )
        forms.append(_action(session, no, "refund", title, amount))
    if status == "needs_review" and order.get("paid_event_at") is None:
        forms.append(_action(session, no, "grant", "Resolve by grant (asks WeChat Pay first)"))
    if status == "pending":
        forms.append(_action(session, no, "query", "Ask WeChat Pay"))
        forms.append(_action(session, no, "close", "Close"))
    if not forms:
        return '<section class="actions"><p>No action applies to this order now.</p></section>'
    return '<section class="actions"><h2>Actions</h2>' + "".join(forms) + "</section>"


def health_page(session: Session, health: Health) -> str:
    queues = "".join(
        f'<tr data-queue="{escape(q.name)}"><td>{escape(q.name)}</td>'
        f"<td>{'?' if q.messages is None else q.messages}</td>"
        f"<td>{'?' if q.consumers is None else q.consumers}</td></tr>"
        for q in health.queues
    )
    runs = "".join(
        f"<tr><td>{escape(what)}</td><td>{_t(at) or 'never'}</td><td>{escape(where)}</td></tr>"
        for what, at, where in health.runs
    )
    diffs = "".join(
        f"<tr><td>{_t(d['created_at'])}</td><td>"
        + _order_link(d["out_trade_no"])
        + f"</td><td>{_t(d['out_refund_no'])}</td><td><code>{_t(d['detail'])}</code></td></tr>"
        for d in health.differences
    )
    endpoints = "".join(
        f'<tr data-endpoint="{_t(e["id"])}"><td>{_t(e["url"])}</td><td>{_t(e["status"])}</td>'
        f"<td>{_t(e['disabled_reason'])}</td><td>{_t(e['failing_since'])}</td>"
        f"<td>{_t(e['failed'])}</td></tr>"
        for e in health.failing_endpoints
    )
    rejected = "".join(
        f"<tr><td>{_t(r['received_at'])}</td><td>{_t(r['reason'])}</td><td>{_t(r['status'])}</td>"
        f"<td>{_t(r['route'])}</td><td>"
        + _order_link(r["out_trade_no"])
        + f"</td><td>{_t(r['event_id'])}</td><td>{_t(r['serial'])}</td></tr>"
        for r in health.rejections
    )
    body = (
        '<section><h2>Queues</h2><table id="queues"><tr><th>queue</th><th>messages</th>'
        f"<th>consumers</th></tr>{queues}</table>"
        '<p><a id="dlq-link" href="/console/dlq">Dead letters: what and why, replay</a></p>'
        "</section>"
        '<section><h2>Last runs (UTC)</h2><table id="runs"><tr><th>job</th><th>finished</th>'
        f"<th>as known by</th></tr>{runs}</table></section>"
        f'<section><h2>Orders needing review</h2><p id="needs-review">{health.needs_review}</p>'
        '<p><a href="/console/orders?status=needs_review">List them</a></p></section>'
        "<section><h2>Bill differences recorded today (China day)</h2>"
        + (
            '<table id="differences"><tr><th>when</th><th>order</th><th>refund</th>'
            f"<th>detail</th></tr>{diffs}</table>"
            if diffs
            else '<p id="differences">None.</p>'
        )
        + "</section><section><h2>Failing webhook endpoints</h2>"
        + (
            '<table id="failing-endpoints"><tr><th>endpoint</th><th>status</th><th>why</th>'
            f"<th>failing since</th><th>failed deliveries</th></tr>{endpoints}</table>"
            if endpoints
            else '<p id="failing-endpoints">None.</p>'
        )
        + "</section><section><h2>Notifications rejected lately (UTC)</h2>"
        + (
            '<table id="rejections"><tr><th>received</th><th>reason</th><th>answered</th>'
            "<th>route</th><th>order</th><th>notification id</th><th>serial</th></tr>"
            f"{rejected}</table>"
            if rejected
            else '<p id="rejections">None.</p>'
        )
        + "</section>"
    )
    return layout("Health", body, session)


def audit_page(session: Session, rows: list[dict[str, Any]]) -> str:
    lines = "".join(
        f"<tr><td>{_t(r['created_at'])}</td><td>{_t(r['operator'])}</td><td>{_t(r['role'])}</td>"
        f"<td>{_t(r['action'])}</td><td>"
        + _order_link(r["out_trade_no"])
        + f"</td><td>{_t(r['reason'])}</td><td>{_t(r['state_before'])}</td>"
        f"<td>{_t(r['state_after'])}</td><td>{_t(r['outcome'])}</td><td>{_t(r['detail'])}</td></tr>"
        for r in rows
    )
    body = (
        '<table id="audit"><tr><th>when (UTC)</th><th>operator</th><th>role</th><th>action</th>'
        "<th>order</th><th>reason</th><th>before</th><th>after</th><th>outcome</th>"
        f"<th>detail</th></tr>{lines}</table>"
    )
    return layout("Audit log", body, session)
