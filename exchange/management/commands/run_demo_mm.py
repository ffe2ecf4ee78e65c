"""`python manage.py run_demo_mm`: the demo market maker and takers (started by make run)."""

from django.core.management.base import BaseCommand

from exchange.demo_market import demo_market_run


class Command(BaseCommand):
    help = "Quote both sides of every trading instrument and cross now and then (demo)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between steps.")
        parser.add_argument("--steps", type=int, default=None, help="Stop after N steps.")
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, interval: float, steps: int | None, seed: int, **options) -> None:
        demo_market_run(interval=interval, steps=steps, seed=seed)
