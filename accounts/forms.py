"""Forms of the sign-in pages (sign-up, login, the one-time code of the 2FA pages) and the
admin's user forms."""

from collections.abc import Callable

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm

from accounts.login_throttle import normalize_email


def new_password_field(label: str, *, help_text: bool = False) -> forms.CharField:
    """A field for a new password (the first of a pair shows the validators' rules)."""
    return forms.CharField(
        label=label,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html() if help_text else "",
    )


def new_password_pair_check(
    form: forms.Form,
    names: tuple[str, str],
    *,
    user,
    differ: str,
    refuse: Callable[[str], str | None] | None = None,
) -> None:
    """A new password typed twice (`names`): the second must equal the first (else `differ` on
    it), then the first must pass `refuse` (a form's own rule) and the password validators for
    `user`; errors go on the field at fault."""
    first_name, second_name = names
    first, second = form.cleaned_data.get(first_name), form.cleaned_data.get(second_name)
    if first and second and first != second:
        form.add_error(second_name, differ)
        return
    if not first:
        return
    refusal = refuse(first) if refuse is not None else None
    if refusal:
        form.add_error(first_name, refusal)
        return
    try:
        password_validation.validate_password(first, user)
    except forms.ValidationError as error:
        form.add_error(first_name, error)


class SignUpForm(forms.Form):
    email = forms.EmailField(
        label="Email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    password1 = new_password_field("Password", help_text=True)
    password2 = new_password_field("Password again")

    def clean_email(self) -> str:
        # Whether the address is taken is the sign-up service's to say: each such refusal
        # counts against the client's sign-in throttle (it tells that the address has an
        # account), which a check here would skip.
        return normalize_email(self.cleaned_data["email"])

    def clean(self) -> dict:
        cleaned = super().clean()
        new_password_pair_check(
            self,
            ("password1", "password2"),
            user=get_user_model()(email=cleaned.get("email", "")),
            differ="The two passwords differ.",
        )
        return cleaned


class PasswordChangeForm(forms.Form):
    """The current password, the new one twice, and a current code when the user has
    two-factor authentication on (the service checks the password and the code)."""

    current_password = forms.CharField(
        label="Current password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )
    new_password1 = new_password_field("New password", help_text=True)
    new_password2 = new_password_field("New password again")
    code = forms.CharField(
        label="Code from your authenticator app or a recovery code",
        max_length=20,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )

    def __init__(self, *args, user, two_factor: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        if not two_factor:
            del self.fields["code"]

    def clean(self) -> dict:
        cleaned = super().clean()
        current = cleaned.get("current_password")
        new_password_pair_check(
            self,
            ("new_password1", "new_password2"),
            user=self.user,
            differ="The two new passwords differ.",
            refuse=lambda new: "The new password is your current one." if new == current else None,
        )
        return cleaned


class LoginForm(forms.Form):
    email = forms.EmailField(
        label="Email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    password = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class CodeForm(forms.Form):
    """A code from the authenticator app, or (where allowed) a recovery code."""

    code = forms.CharField(
        label="Code from your authenticator app or a recovery code",
        max_length=20,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "autocapitalize": "none",
                "spellcheck": "false",
                "autofocus": True,
            }
        ),
    )

    def __init__(self, *args, app_code_only: bool = False, autofocus: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        widget = self.fields["code"].widget
        if app_code_only:
            self.fields["code"].label = "6-digit code from your authenticator app"
            widget.attrs.update(inputmode="numeric", pattern=r"[0-9 ]{6,7}", maxlength="7")
        if not autofocus:
            widget.attrs.pop("autofocus", None)


def unique_email(value: str, *, exclude_pk: int | None = None) -> str:
    """`value` as accounts keep it (trimmed, lower case); a ValidationError when another
    account has it in any case: sign-in finds an account by its email whatever the case."""
    email = normalize_email(value)
    others = get_user_model().objects.filter(email__iexact=email)
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    if others.exists():
        raise forms.ValidationError("An account with this email already exists.")
    return email


class StaffUserCreationForm(AdminUserCreationForm):
    """The admin's add-user form: an email is required (users sign in with it) and unique in
    any case. Without it, a second user added with no email was a 500 (the empty email was
    taken), and one whose email differed only in case could never sign in."""

    class Meta(AdminUserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    def clean_email(self) -> str:
        return unique_email(self.cleaned_data["email"])


class StaffUserChangeForm(UserChangeForm):
    """The admin's change-user form, with the same rule for the email."""

    class Meta(UserChangeForm.Meta):
        model = get_user_model()

    def clean_email(self) -> str:
        return unique_email(self.cleaned_data["email"], exclude_pk=self.instance.pk)
