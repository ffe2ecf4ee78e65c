"""The admin as compliance and operations staff use it, over HTTP with the real web process:
who may grant powers, staff actions on schedules, and list pages that stay usable on big
tables."""

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken

from accounts.models import DailyVolume
from accounts.tests.otp_login import make_person, verified_client
from audit.models import AuditRecord
from exchange import admin as exchange_admin
from exchange.models import Order, Trade
from exchange.selectors import table_rows_estimate
from exchange.tests.admin_http import admin_action_post, admin_client, csrf_token
from exchange.tests.api_client import ApiClient, make_instrument, make_user
from matching.models import Command


def permission(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


@pytest.mark.processes
def test_staff_who_may_change_groups_cannot_give_a_group_powers(exchange_stack, live_db):
    # Staff with auth.change_group, in a group, ticked accounts.add_ledgerentry on it and could
    # credit deposits: only a superuser grants powers.
    staff = admin_client(
        exchange_stack, permissions=("auth.view_group", "auth.change_group", "auth.add_group")
    )
    me = get_user_model().objects.filter(is_staff=True).latest("pk")
    group = Group.objects.create(name=f"desk-{me.pk}")
    group.permissions.add(permission("audit.view_audit_trail"))
    me.groups.add(group)  # as a superuser had made them a member
    credit = permission("accounts.add_ledgerentry")
    url = f"/admin/auth/group/{group.pk}/change/"
    assert 'name="permissions"' not in staff.get(url).text
    saved = staff.post(
        url,
        data={
            "csrfmiddlewaretoken": csrf_token(staff, url),
            "name": f"desk-{me.pk}-renamed",
            "permissions": [str(credit.pk)],
            "_save": "Save",
        },
    )
    assert saved.status_code == 302  # the name is saved, the powers are not
    group.refresh_from_db()
    assert group.name == f"desk-{me.pk}-renamed"
    assert list(group.permissions.all()) == [permission("audit.view_audit_trail")]
    assert not get_user_model().objects.get(pk=me.pk).has_perm("accounts.add_ledgerentry")
    add_url = "/admin/auth/group/add/"
    added = staff.post(
        add_url,
        data={
            "csrfmiddlewaretoken": csrf_token(staff, add_url),
            "name": f"new-{me.pk}",
            "permissions": [str(credit.pk)],
            "_save": "Save",
        },
    )
    assert added.status_code == 302
    assert not Group.objects.get(name=f"new-{me.pk}").permissions.exists()
    # A superuser does.
    root = admin_client(exchange_stack)
    granted = root.post(
        url,
        data={
            "csrfmiddlewaretoken": csrf_token(root, url),
            "name": group.name,
            "permissions": [str(credit.pk)],
            "_save": "Save",
        },
    )
    assert granted.status_code == 302
    assert list(group.permissions.all()) == [credit]


@pytest.mark.processes
def test_periodic_tasks_are_stopped_or_run_only_with_the_permission_and_on_the_record(
    exchange_stack, live_db
):
    # Anyone who could view the periodic tasks could disable the audit sealer or the expiry of
    # GTD/DAY orders (or run any task at once), and no record said who had.
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    task = PeriodicTask.objects.create(
        name=f"sealer-{uuid.uuid4().hex[:8]}",
        task="audit.tasks.audit_seal_task",
        interval=every_second,
        enabled=True,
    )
    changelist = "/admin/django_celery_beat/periodictask/"
    viewer = admin_client(exchange_stack, permissions=("django_celery_beat.view_periodictask",))
    assert "disable_tasks" not in viewer.get(changelist).text
    for action in ("disable_tasks", "toggle_tasks"):
        admin_action_post(viewer, changelist, action, task.pk)
        task.refresh_from_db()
        assert task.enabled, action
    operator = admin_client(
        exchange_stack,
        permissions=(
            "django_celery_beat.view_periodictask",
            "django_celery_beat.change_periodictask",
        ),
    )
    me = get_user_model().objects.filter(is_staff=True).latest("pk")
    assert admin_action_post(operator, changelist, "disable_tasks", task.pk).status_code == 302
    task.refresh_from_db()
    assert not task.enabled
    assert admin_action_post(operator, changelist, "toggle_tasks", task.pk).status_code == 302
    task.refresh_from_db()
    assert task.enabled
    records = AuditRecord.objects.filter(
        event_type="staff.action", payload__model="django_celery_beat.periodictask"
    ).filter(payload__object_id=str(task.pk))
    assert [(r.actor_id, r.payload["change_message"]) for r in records.order_by("seq")] == [
        (me.pk, "Disabled"),
        (me.pk, "Enabled"),
    ]
    assert "Disabled" in operator.get(f"{changelist}{task.pk}/history/").text


def results(page) -> int:
    """The number of rows an admin list page says it found."""
    assert page.status_code == 200, page.status_code
    return int(re.search(r"(\d+) results?", page.text).group(1))


@pytest.mark.processes
def test_the_trades_and_the_audit_trail_are_searched_by_order_or_trade_id(exchange_stack, live_db):
    instrument = make_instrument()
    maker, taker = ApiClient(exchange_stack), ApiClient(exchange_stack)
    fields = {"symbol": instrument.symbol, "order_type": "limit", "price": "12.00"}
    sell = maker.place(side="sell", quantity="2", **fields).json()["order_id"]
    buy = taker.place(side="buy", quantity="2", **fields).json()["order_id"]
    trade = Trade.objects.get(maker_order_id=sell)
    staff = admin_client(exchange_stack)
    for term in (str(sell), f" {buy} ", f'"{trade.pk}"'):
        page = staff.get("/admin/exchange/trade/", params={"q": term})
        assert f"/admin/exchange/trade/{trade.pk}/change/" in page.text, term
    history = f"/order-history/{sell}/"
    assert history in staff.get("/admin/audit/auditrecord/", params={"q": str(sell)}).text
    for term in ("abc", "\u00b2", "99999999999999999999", "-1", f"{sell}abc"):
        for url in ("/admin/exchange/trade/", "/admin/audit/auditrecord/"):
            assert results(staff.get(url, params={"q": term})) == 0, (url, term)


@pytest.mark.django_db
def test_searching_the_trail_or_the_trades_by_id_reads_their_indexes_not_every_row():
    # Django's `=id` search compared text, UPPER(order_id::text) = UPPER('42'), which no index
    # serves: each search of the audit trail (and of the trades) by an order id read every
    # row, for the page and again for its count.
    staff = verified_client(make_person(superuser=True))
    for url, table in (
        ("/admin/audit/auditrecord/", "audit_record"),
        ("/admin/exchange/trade/", "exchange_trade"),
    ):
        with CaptureQueriesContext(connection) as queries:
            assert staff.get(url, {"q": "42"}).status_code == 200
        searches = [
            query["sql"]
            for query in queries.captured_queries
            if f'FROM "{table}"' in query["sql"] and "42" in query["sql"]
        ]
        assert len(searches) >= 2, url  # the count and the page
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            for sql in searches:
                cursor.execute("EXPLAIN " + sql)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                assert "Seq Scan" not in plan and "upper(" not in plan, plan


def queries_for(client, url: str, params: dict) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url, params).status_code == 200
    return len(queries.captured_queries)


def stored_trade(instrument, seq: int) -> Trade:
    """A trade row between two new users' orders (no engine: only the admin reads it)."""
    maker, taker = make_user(funds={}), make_user(funds={})
    orders = [
        Order.objects.create(
            user=user, instrument=instrument, side=side, order_type="limit",
            time_in_force="GTC", price=Decimal("10"), quantity=Decimal("1"),
            maker_fee_ppm=0, taker_fee_ppm=0, status="filled", is_open=False,
        )
        for user, side in ((maker, "sell"), (taker, "buy"))
    ]  # fmt: skip
    return Trade.objects.create(
        instrument=instrument, engine_trade_seq=seq, price=Decimal("10"), quantity=Decimal("1"),
        quote_quantity=Decimal("10"), maker_order=orders[0], taker_order=orders[1],
        maker_user=maker, taker_user=taker, taker_side="buy", maker_fee=Decimal(0),
        taker_fee=Decimal(0), executed_at=dt.datetime.now(dt.UTC), executed_at_ns=seq,
    )  # fmt: skip


@pytest.mark.django_db
def test_the_trade_and_recovery_code_lists_cost_the_same_queries_for_one_row_or_many():
    # The trade list read each row's maker and taker order one by one (200 queries for a page
    # of 100), the recovery-code list counted each device's codes one by one.
    staff = verified_client(make_person(superuser=True))
    instrument = make_instrument()
    make_instrument()  # Django ignores a filter of a single choice
    by_instrument = {"instrument__id__exact": instrument.pk}
    stored_trade(instrument, 1)
    one = queries_for(staff, "/admin/exchange/trade/", by_instrument)
    for seq in range(2, 6):
        stored_trade(instrument, seq)
    assert queries_for(staff, "/admin/exchange/trade/", by_instrument) == one
    tag = uuid.uuid4().hex[:10]

    def recovery_codes(count: int) -> None:
        user = make_user(f"codes-{tag}", funds={})
        device = StaticDevice.objects.create(user=user, name="backup")
        for n in range(count):
            StaticToken.objects.create(device=device, token=f"code{n}")

    recovery_codes(3)
    by_tag = {"q": tag}
    one = queries_for(staff, "/admin/otp_static/staticdevice/", by_tag)
    for count in (1, 2, 4):
        recovery_codes(count)
    page = staff.get("/admin/otp_static/staticdevice/", by_tag).content.decode()
    assert sorted(re.findall(r'<td class="field-codes_left">(\d+)</td>', page)) == [
        "1",
        "2",
        "3",
        "4",
    ]
    assert queries_for(staff, "/admin/otp_static/staticdevice/", by_tag) == one


@pytest.mark.django_db
def test_big_tables_list_pages_read_no_column_of_every_row_and_count_once():
    # The shard and asset filters ran SELECT DISTINCT over every command, journal row or
    # ledger account on each load, and each list counted the whole table twice (its results,
    # then "M total").
    staff = verified_client(make_person(superuser=True))
    instrument = make_instrument(base_asset="QQZ")
    for url in (
        "/admin/matching/command/",
        "/admin/matching/journalentry/",
        "/admin/accounts/ledgeraccount/",
        "/admin/exchange/order/",
        "/admin/exchange/trade/",
        "/admin/accounts/ledgerentry/",
    ):
        with CaptureQueriesContext(connection) as queries:
            page = staff.get(url)
        assert page.status_code == 200
        sql = [query["sql"] for query in queries.captured_queries]
        assert not [s for s in sql if "DISTINCT" in s], url
        assert len([s for s in sql if s.startswith("SELECT COUNT(*)")]) == 1, url
    assert '?asset=QQZ"' in staff.get("/admin/accounts/ledgeraccount/").content.decode()
    # The filters still filter, and refuse what is not a shard without a 500.
    command_page = "/admin/matching/command/"
    listing = Command.objects.filter(shard=instrument.shard).latest("id")  # its listing's
    link = f"/admin/matching/command/{listing.pk}/change/"

    def listed(shard: str) -> bool:
        page = staff.get(command_page, {"shard": shard})
        assert page.status_code == 200, shard
        return link in page.content.decode()

    assert listed(str(instrument.shard))
    for value in (str(instrument.shard + 1), "abc", "\u00b2", "99999999999999999999", "-1"):
        assert not listed(value), value


@pytest.mark.django_db
def test_an_unfiltered_list_of_a_big_table_is_counted_from_the_estimate_not_row_by_row(
    monkeypatch,
):
    # Opening the orders, trades or audit trail ran SELECT COUNT(*) over the whole table
    # (minutes on millions of rows) on each load, for the paginator alone.
    monkeypatch.setattr(exchange_admin, "EXACT_COUNT_UP_TO", 2)
    staff = verified_client(make_person(superuser=True))
    instrument = make_instrument()
    make_instrument()  # Django ignores a filter of a single choice
    for seq in range(1, 4):
        stored_trade(instrument, seq)
    with connection.cursor() as cursor:
        for table in ("exchange_order", "exchange_trade", "audit_record"):
            cursor.execute(f"ANALYZE {table}")
    for url, table, name in (
        ("/admin/exchange/order/", "exchange_order", "orders"),
        ("/admin/exchange/trade/", "exchange_trade", "trades"),
        ("/admin/audit/auditrecord/", "audit_record", "audit records"),
    ):
        estimate = table_rows_estimate(table=table)
        assert estimate > 2, table
        with CaptureQueriesContext(connection) as queries:
            page = staff.get(url).content.decode()
        assert not [
            query["sql"]
            for query in queries.captured_queries
            if query["sql"].startswith(f'SELECT COUNT(*) AS "__count" FROM "{table}"')
        ], url
        assert f"about {estimate} {name}" in page, url
    # A filtered list is counted: its count is exact.
    page = staff.get("/admin/exchange/trade/", {"instrument__id__exact": instrument.pk})
    assert "3 trades" in page.content.decode() and "about" not in page.content.decode()


@pytest.mark.processes
def test_an_admin_action_on_a_selection_that_is_not_ids_is_refused_without_a_500(
    exchange_stack, live_db
):
    # A posted _selected_action of "abc" reached the ORM's pk__in: every action (a staff
    # cancel, a halt, a key's revocation, Django's "delete selected") answered 500.
    instrument = make_instrument()
    trader = ApiClient(exchange_stack)
    order_id = trader.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="10.00", quantity="1"
    ).json()["order_id"]
    staff = admin_client(exchange_stack)
    for changelist, action in (
        ("/admin/exchange/order/", "cancel_orders"),
        ("/admin/exchange/instrument/", "halt_trading"),
        ("/admin/accounts/apikey/", "revoke_keys"),
        ("/admin/accounts/user/", "delete_selected"),
        ("/admin/django_celery_beat/periodictask/", "disable_tasks"),
    ):
        for selected in ("abc", "", "1.5", "\u00b2", f"{order_id}x"):
            response = admin_action_post(staff, changelist, action, selected, index="0")
            assert response.status_code == 302, (changelist, action, selected)
            page = staff.get(response.headers["location"]).text
            assert "the selection is not a list of ids" in page, (changelist, action, selected)
    assert Order.objects.get(pk=order_id).status == "new"
    instrument.refresh_from_db()
    assert instrument.status == "trading"
    # A selection of ids still acts.
    admin_action_post(staff, "/admin/exchange/order/", "cancel_orders", order_id, index="0")
    assert Command.objects.filter(order_id=order_id, kind="cancel").exists()


@pytest.mark.processes
def test_staff_change_their_password_only_on_the_throttled_audited_page(exchange_stack, live_db):
    # Django's /admin/password_change/ took the current password alone: no one-time code, no
    # count of wrong guesses (a stolen staff session could guess without limit), no record.
    staff = admin_client(exchange_stack)
    me = get_user_model().objects.filter(is_staff=True).latest("pk")
    url = "/admin/password_change/"
    page = staff.get(url)
    assert page.status_code == 302 and page.headers["location"] == "/accounts/password/"
    for old in ("wrong-guess-1", "staff-password-1"):
        changed = staff.post(
            url,
            data={
                "csrfmiddlewaretoken": csrf_token(staff, "/admin/"),
                "old_password": old,
                "new_password1": "a-new-password-77",
                "new_password2": "a-new-password-77",
            },
        )
        assert changed.status_code == 302 and changed.headers["location"] == "/accounts/password/"
    me.refresh_from_db()
    assert me.check_password("staff-password-1")


@pytest.mark.django_db
def test_the_daily_volume_lists_narrow_by_day_without_reading_every_row_on_load():
    # Their date hierarchy ran MIN/MAX and SELECT DISTINCT of the day over every row (kept for
    # good, one per user and day) on each load.
    staff = verified_client(make_person(superuser=True))
    user = make_user(funds={})
    today = dt.datetime.now(dt.UTC).date()
    now = dt.datetime.now(dt.UTC)
    recent = DailyVolume.objects.create(user=user, day=today, quote_volume=1, updated_at=now)
    old = DailyVolume.objects.create(
        user=user, day=today - dt.timedelta(days=40), quote_volume=1, updated_at=now
    )
    for url in ("/admin/accounts/dailyvolume/", "/admin/accounts/quotepresence/"):
        with CaptureQueriesContext(connection) as queries:
            assert staff.get(url).status_code == 200
        day_scans = [
            query["sql"]
            for query in queries.captured_queries
            if "DISTINCT" in query["sql"] or 'MIN("accounts_' in query["sql"]
        ]
        assert not day_scans, url
    page = staff.get(
        "/admin/accounts/dailyvolume/",
        {"day__gte": str(today - dt.timedelta(days=6)), "day__lt": str(today + dt.timedelta(1))},
    ).content.decode()
    assert f"/dailyvolume/{recent.pk}/change/" in page
    assert f"/dailyvolume/{old.pk}/change/" not in page
