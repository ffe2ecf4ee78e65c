"""`manage.py check --deploy`: Django's own checks that the security, clickjacking and CSRF
middleware are installed look for Django's class paths by name, so they warned about
`exchange.middleware`'s subclasses of them (security.W001-W003: warnings a deployment learns to
ignore, next to the ones that matter). Those three are silenced in settings and checked here
instead, by class: a MIDDLEWARE without the middleware, or a subclass of it, still warns."""

from django.conf import settings
from django.core import checks
from django.middleware import clickjacking, csrf, security
from django.utils.module_loading import import_string

# Django's check id -> the middleware it wants installed and what goes without it.
REPLACED_CHECKS = {
    "security.W001": (
        security.SecurityMiddleware,
        "the SECURE_* settings (HSTS, the HTTPS redirect, nosniff, referrer policy) take no effect",
    ),
    "security.W002": (
        clickjacking.XFrameOptionsMiddleware,
        "pages are served without an X-Frame-Options header (clickjacking)",
    ),
    "security.W003": (
        csrf.CsrfViewMiddleware,
        "forms and session-authenticated requests have no cross-site request forgery protection",
    ),
}


def installed_middleware() -> list[type]:
    return [import_string(path) for path in settings.MIDDLEWARE]


@checks.register(checks.Tags.security, deploy=True)
def security_middleware_installed(**kwargs) -> list[checks.CheckMessage]:
    installed = installed_middleware()
    return [
        checks.Warning(
            f"No {wanted.__module__}.{wanted.__qualname__} (or a subclass) in MIDDLEWARE: "
            f"{consequence}.",
            id=f"exchange.{check_id.split('.')[1]}",
        )
        for check_id, (wanted, consequence) in REPLACED_CHECKS.items()
        if not any(issubclass(cls, wanted) for cls in installed)
    ]
