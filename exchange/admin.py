"""Staff views of the trading core. Orders and trades are read-only; halts, resumes,
delistings and cancels go through the services (and so through the engine and the audit trail)."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.utils import lookup_spawns_duplicates
from django.core.paginator import Paginator
from django.db import models, transaction
from django.db.models import Q
from django.shortcuts import render
from django.utils.functional import cached_property
from django.utils.text import smart_split, unescape_string_literal
from django_celery_beat import admin as celery_beat_admin
from django_celery_beat.models import PeriodicTask

from exchange import services
from exchange.api_errors import ApiError
from exchange.models import Instrument, Order, Trade
from exchange.selectors import table_rows_estimate


def changed_fields_save(obj, form) -> None:
    """Save what an admin change form changed, and only that: the whole row as read when the
    form was posted wrote back, with its old value, whatever committed meanwhile (a halt, a
    password, an authenticator's replay guard). Many-to-many fields are the form's to save."""
    concrete = {field.name for field in obj._meta.concrete_fields}
    obj.save(update_fields=[name for name in form.changed_data if name in concrete])


_BIGINT_MAX = 2**63 - 1
_TEXT_LOOKUPS = {"^": "istartswith", "=": "iexact", "@": "search"}


def _integer_field(model, path: str) -> bool:
    """Whether `path` ("id", "maker_order__id", "order_id") names an integer column."""
    field = None
    for name in path.split("__"):
        field = model._meta.get_field(name)
        if field.is_relation:
            model = field.related_model
    if field is not None and field.is_relation:
        field = field.target_field
    return isinstance(field, models.IntegerField | models.AutoField)


def typed_integer(term: str) -> int | None:
    """A search term as an id: ASCII digits within PostgreSQL's bigint, else None."""
    if not (term.isascii() and term.isdigit()):
        return None
    value = int(term)
    return value if value <= _BIGINT_MAX else None


class IdSearchAdmin(admin.ModelAdmin):
    """Exact searches (`=name`) of integer columns compare integers, so they use the column's
    index. Django's own `=id` search compares text (UPPER(id::text) = UPPER('42')), which no
    index serves: every search of the audit trail or the trades by an order id read the whole
    table, twice (the page and its count). A term that is not an id matches no such column."""

    def get_search_results(self, request, queryset, search_term):
        search_fields = self.get_search_fields(request)
        if not search_term or not search_fields:
            return super().get_search_results(request, queryset, search_term)
        lookups: list[tuple[str, bool]] = []  # (lookup, integer)
        for field in search_fields:
            prefix, name = (field[0], field[1:]) if field[0] in "^=@" else ("", field)
            if prefix == "=" and _integer_field(queryset.model, name):
                lookups.append((name, True))
            else:
                lookups.append((f"{name}__{_TEXT_LOOKUPS.get(prefix, 'icontains')}", False))
        terms = Q()
        for bit in smart_split(search_term):
            if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
                bit = unescape_string_literal(bit)
            number = typed_integer(bit)
            either = [
                Q(**{lookup: number if integer else bit})
                for lookup, integer in lookups
                if not integer or number is not None
            ]
            if not either:
                return queryset.none(), False
            terms &= Q.create(either, connector=Q.OR)
        duplicates = any(lookup_spawns_duplicates(self.opts, lookup) for lookup, _ in lookups)
        return queryset.filter(terms), duplicates


# Up to this many rows (as PostgreSQL estimates them) an unfiltered list is counted exactly.
EXACT_COUNT_UP_TO = 100_000


class TableEstimatePaginator(Paginator):
    """The admin's paginator for tables of millions of rows: the unfiltered list takes its
    count from PostgreSQL's estimate of the table's rows once that is past EXACT_COUNT_UP_TO
    (the page says "about"); a filtered list, or a smaller table, is counted. A COUNT(*) of the
    whole table, on each opening of the list, reads every row (minutes on the audit trail or
    the orders of a few years)."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not queryset.query.where:
            estimate = table_rows_estimate(table=queryset.model._meta.db_table)
            if estimate > EXACT_COUNT_UP_TO:
                self.estimated = True
                return estimate
        return super().count

    estimated = False


class ReadOnlyAdmin(IdSearchAdmin):
    """Records only the engine, the worker or a service writes: staff look, never edit.

    Tables of millions of rows: a filtered list counts what it found, not also the whole table
    ("N results (M total)" had counted every order, trade or command again on each search)."""

    show_full_result_count = False
    paginator = TableEstimatePaginator

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class _ReasonField(forms.CharField):
    """A reason as typed: the service refuses what it cannot take (too long, a NUL), saying
    why, where the form's own validators would make the admin say only "No action selected"."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.validators = []


class InstrumentActionForm(ActionForm):
    """The action bar with a field for a halt's (or delisting's) reason."""

    reason = _ReasonField(required=False, label="Reason (halt, delist)")


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    action_form = InstrumentActionForm
    list_display = (
        "symbol",
        "base_asset",
        "quote_asset",
        "tick_size",
        "lot_size",
        "status",
        "shard",
    )
    list_filter = ("status", "quote_asset", "shard")
    search_fields = ("symbol", "base_asset", "quote_asset")
    readonly_fields = ("shard", "status", "status_reason", "created_at")
    actions = ["halt_trading", "resume_trading", "delist"]

    def has_delete_permission(self, request, obj=None) -> bool:
        # Listed instruments stay: its shard's engine holds the book (a worker could not rebuild
        # a shard whose book names a deleted instrument), and the symbol names its history.
        # A mistaken listing is halted and a corrected one listed under another symbol.
        return False

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            # Fixed once listed: the engine counts every price and quantity in ticks and lots
            # of this scale, and holds, balances and the ledger are in these assets.
            fields += [*services.INSTRUMENT_FIXED_AT_LISTING]
        return fields

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            services.instrument_list(instrument=obj, actor=request.user, http_request=request)
            return
        # Locked as the save's UPDATE locks it: another staff member's edit committed meanwhile
        # is read here, and ends up in the rules sent (the form's row as it read it had sent the
        # engine the other edit's old values, which then stayed in force there).
        previous = Instrument.objects.select_for_update(no_key=True).get(pk=obj.pk)
        # A halt, resume or delisting committed meanwhile had been undone (the book halted in
        # its engine, while order entry and the ticker said trading).
        changed_fields_save(obj, form)
        obj.refresh_from_db()  # this form's changes over what others committed before it
        command = services.instrument_rules_update(
            instrument=obj, previous=previous, actor=request.user, http_request=request
        )
        if command is not None:
            self.message_user(request, f"New trading rules sent to the {obj.symbol} book.")

    # Each needs `exchange.change_instrument`: without `permissions` an action is offered to
    # (and run for) anyone who may view the list, so a read-only viewer could halt, resume
    # and delist instruments.
    @admin.action(
        description="Halt trading (new orders rejected, cancels allowed)", permissions=["change"]
    )
    def halt_trading(self, request, queryset) -> None:
        reason = self._reason(request)
        if reason is not None:
            self._status_change(request, queryset, services.instrument_halt, "Halt", reason=reason)

    @admin.action(description="Resume trading", permissions=["change"])
    def resume_trading(self, request, queryset) -> None:
        if request.POST.get("reason", "").strip():
            self.message_user(
                request, "A resume takes no reason: the one typed was not kept.", messages.WARNING
            )
        self._status_change(request, queryset, services.instrument_resume, "Resume")

    def _reason(self, request) -> str | None:
        """The action bar's reason, checked once for all the instruments selected; None (and
        a warning saying why) when it cannot be taken."""
        try:
            return services.halt_reason_clean(request.POST.get("reason", ""))
        except ApiError as exc:
            self.message_user(request, f"Nothing was sent: {exc.message}", messages.WARNING)
            return None

    def _status_change(self, request, queryset, service, what: str, **fields) -> None:
        """Send `service` (halt, resume) for each instrument; a refusal (a delisted one, one
        already in that state) is a warning naming it, the others still go."""
        sent = 0
        reason = fields.get("reason")
        for instrument in queryset:
            try:
                service(instrument=instrument, actor=request.user, http_request=request, **fields)
                sent += 1
            except ApiError as exc:
                self.message_user(request, exc.message, messages.WARNING)
                continue
            # In the instrument's History, as an edit there is (and a staff.action record).
            self.log_change(
                request, instrument, f"{what} sent" + (f" (reason: {reason})" if reason else "")
            )
        if sent:
            self.message_user(request, f"{what} sent for {sent} instrument(s).")

    @admin.action(
        description="Delist for good (halt, cancel every open order)", permissions=["change"]
    )
    def delist(self, request, queryset):
        """A confirmation page first (delisting cannot be undone), then the delisting."""
        instruments = list(queryset.exclude(status=Instrument.Status.DELISTED))
        if not instruments:
            self.message_user(request, "Already delisted.", messages.WARNING)
            return None
        reason = self._reason(request)
        if reason is None:
            return None
        if request.POST.get("confirmed") != "yes":
            for instrument in instruments:
                instrument.open_orders = Order.objects.filter(
                    instrument=instrument, status__in=Order.OPEN_STATUSES
                ).count()
            context = {
                **self.admin_site.each_context(request),
                "instruments": instruments,
                "reason": reason,
            }
            return render(request, "admin/exchange/instrument/delist_confirmation.html", context)
        for instrument in instruments:
            try:
                cancelled = services.instrument_delist(
                    instrument=instrument,
                    actor=request.user,
                    reason=reason,
                    http_request=request,
                )
            except ApiError as exc:
                self.message_user(request, exc.message, messages.WARNING)
                continue
            done = f"delisted; {cancelled} open order(s) cancelled"
            self.log_change(
                request,
                instrument,
                f"Delist sent: {done}" + (f" (reason: {reason})" if reason else ""),
            )
            self.message_user(request, f"{instrument.symbol} {done}.")
        return None


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "user",
        "instrument",
        "side",
        "order_type",
        "time_in_force",
        "price",
        "quantity",
        "filled_quantity",
        "status",
        "reason",
        "created_at",
    )
    list_filter = ("status", "order_type", "side", "time_in_force", "instrument")
    search_fields = ("=id", "client_order_id", "user__username", "user__email")
    list_select_related = ("user", "instrument")
    actions = ["cancel_orders"]

    def has_change_permission(self, request, obj=None) -> bool:
        # Django's own check (the `exchange.change_order` permission), which the cancel action
        # needs. It had been any staff member's: every user's orders open to view and to
        # cancel without a permission. Never for one order: its page is a view without Save.
        # Saving wrote back the whole row as read, over the worker's fill committed meanwhile
        # (the order open again, refilled once the worker rebuilt its book from it).
        if obj is not None:
            return False
        return admin.ModelAdmin.has_change_permission(self, request, obj)

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Order._meta.fields]

    @admin.action(description="Cancel on the user's behalf", permissions=["change"])
    def cancel_orders(self, request, queryset) -> None:
        sent = 0
        for order in queryset.select_related("instrument"):
            try:
                services.order_cancel(
                    order=order, actor=request.user, reason="staff", http_request=request
                )
                sent += 1
                self.log_change(request, order, "Cancel sent on the user's behalf")
            except ApiError as exc:
                # Recorded as a trader's refused cancel is (it had left no record).
                services.order_change_refusal_record(
                    user=request.user, kind="cancel", sent={"order_id": order.pk},
                    order=order, exc=exc, http_request=request, on_behalf=True,
                )  # fmt: skip
                self.message_user(request, f"Order {order.pk}: {exc.message}", messages.WARNING)
        if sent:  # not "sent for 0" beside the refusals (as the halt and resume actions)
            self.message_user(request, f"Cancel sent for {sent} order(s).")


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "instrument",
        "price",
        "quantity",
        "taker_side",
        "maker_order",
        "taker_order",
        "maker_fee",
        "taker_fee",
        "executed_at",
    )
    list_filter = ("instrument", "taker_side")
    search_fields = ("=id", "=maker_order__id", "=taker_order__id")
    # Both orders are columns: without them here each row read its two orders one by one.
    list_select_related = ("instrument", "maker_order", "taker_order")


# ---- Celery beat's schedules ----------------------------------------------------------------

if admin.site.is_registered(PeriodicTask):  # django-celery-beat's, if its admin came first
    admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(celery_beat_admin.PeriodicTaskAdmin):
    """django-celery-beat's periodic tasks, whose list actions need the permission to change
    them and are recorded. Its enable, disable, toggle and run actions had no permission of
    their own (anyone who could view the list could stop the audit sealer or the expiry of
    GTD/DAY orders, or run any scheduled task at once) and wrote with a bulk update, no record
    of who did it: now each needs `django_celery_beat.change_periodictask`, and each task acted
    on shows in its History and in the audit trail as a `staff.action`."""

    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable_tasks(self, request, queryset) -> None:
        self._recorded(request, queryset, super().enable_tasks, lambda task: "Enabled")

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request, queryset) -> None:
        self._recorded(request, queryset, super().disable_tasks, lambda task: "Disabled")

    @admin.action(description="Toggle activity of selected tasks", permissions=["change"])
    def toggle_tasks(self, request, queryset) -> None:
        self._recorded(
            request,
            queryset,
            super().toggle_tasks,
            lambda task: "Disabled" if task.enabled else "Enabled",
        )

    @admin.action(description="Run selected tasks", permissions=["change"])
    def run_tasks(self, request, queryset) -> None:
        tasks = list(queryset.order_by("pk"))
        super().run_tasks(request, queryset)  # sends them all, or none when one is unknown
        if all(self.celery_app.tasks.get(task.task) is not None for task in tasks):
            for task in tasks:
                self.log_change(request, task, "Run now")

    def _recorded(self, request, queryset, action, message) -> None:
        """Run `action` and record `message(task)` (as the task was before) for each task, in
        one transaction with the change."""
        with transaction.atomic():
            tasks = list(queryset.order_by("pk"))
            action(request, queryset)
            for task in tasks:
                self.log_change(request, task, message(task))
