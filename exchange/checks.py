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


def _replaces(django_path: str, wanted: type, installed: list[type]) -> bool:
    """Whether a subclass of `wanted` is installed where Django's name check sees none."""
    return django_path not in settings.MIDDLEWARE and any(
        issubclass(cls, wanted) for cls in installed
    )


@checks.register(checks.Tags.security, deploy=True)
def settings_behind_middleware(**kwargs) -> list[checks.CheckMessage]:
    """Django's deploy checks of the settings these middleware read (HSTS, the HTTPS redirect,
    secure CSRF cookie, ...) run only when they find Django's class path in MIDDLEWARE, so with
    our subclasses they never ran: `check --deploy` of a plain-HTTP production configuration
    (HTTPS unset) warned about the session cookie alone. The same checks, by class. (HSTS for
    subdomains and preloading, security.W005/W021, are left out: a choice for the domain.)"""
    from django.core.checks.security import base
    from django.core.checks.security import csrf as csrf_checks

    installed = installed_middleware()
    with_security = _replaces(
        "django.middleware.security.SecurityMiddleware", security.SecurityMiddleware, installed
    )
    with_csrf = _replaces(
        "django.middleware.csrf.CsrfViewMiddleware", csrf.CsrfViewMiddleware, installed
    )
    with_xframe = _replaces(
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
        clickjacking.XFrameOptionsMiddleware,
        installed,
    )
    failing = [
        (with_security and not settings.SECURE_HSTS_SECONDS, base.W004),
        (with_security and settings.SECURE_CONTENT_TYPE_NOSNIFF is not True, base.W006),
        (with_security and settings.SECURE_SSL_REDIRECT is not True, base.W008),
        (with_security and not settings.SECURE_REFERRER_POLICY, base.W022),
        (
            with_csrf
            and not settings.CSRF_USE_SESSIONS
            and settings.CSRF_COOKIE_SECURE is not True,
            csrf_checks.W016,
        ),
        (with_xframe and settings.X_FRAME_OPTIONS != "DENY", base.W019),
    ]
    return [message for failed, message in failing if failed]


@checks.register(checks.Tags.security, deploy=True)
def secret_key_set(**kwargs) -> list[checks.CheckMessage]:
    """Without SECRET_KEY each host (each container) generates its own into its var/: Django's
    check finds a long random key and says nothing, while sessions, CSRF tokens and the API
    keys' encryption (derived from it) then differ from one process's host to the next."""
    if not getattr(settings, "SECRET_KEY_GENERATED", False):
        return []
    return [
        checks.Warning(
            "SECRET_KEY is not set: this host uses the development key generated into "
            f"{settings.VAR_DIR / 'secret_key'}. Set SECRET_KEY (the same on every host): "
            "sessions, CSRF tokens and API key secrets depend on it.",
            id="exchange.W004",
        )
    ]
