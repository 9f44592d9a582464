"""Account workflows: the public surface of the accounts app.

Sign-in is by email only. One form serves sign-up and sign-in: it creates the user
if needed and sends one mail holding both a one-click magic link (django-sesame
token) and a short code (allauth's login-by-code). Either one logs the person in
through allauth, which stays the owner of the session and its login stages.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache
from urllib.parse import urlencode

from allauth.account.internal.flows.login_by_code import LoginCodeVerificationProcess
from allauth.account.utils import perform_login
from allauth.core import ratelimit
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone as dj_timezone
from django.utils.http import url_has_allowed_host_and_scheme
from sesame.tokens import create_token, parse_token

from .models import Account, Membership, User, normalise_email, valid_timezone

# Scoped so that a sesame token minted for any other purpose can never sign anyone in.
MAGIC_LINK_SCOPE = "login"
# Set in the session of the browser that asked for the mail: a GET of the link from
# that browser may sign in at once; any other GET (an email scanner, another device)
# gets a confirm button instead, so merely fetching the URL never consumes it.
ASKING_BROWSER_SESSION_KEY = "magic_link_user_id"
# The validated ?next= of the pending sign-in, read back when the mail is (re)sent.
NEXT_SESSION_KEY = "magic_link_next"


class LoginMailRateLimited(Exception):
    """Too many login mails for this email address or from this IP address."""


@transaction.atomic
def user_get_or_create(*, email: str, timezone_name: str = "UTC") -> tuple[User, bool]:
    """Return the user for `email`, creating them and their personal account if new."""
    email = normalise_email(email)
    user = User.objects.filter(email=email).first()
    if user is not None:
        return user, False
    user = User.objects.create_user(email=email)
    tz = timezone_name if timezone_is_valid(timezone_name) else "UTC"
    account = Account.objects.create(name=email, timezone=tz)
    Membership.objects.create(account=account, user=user, role=Membership.Role.OWNER)
    return user, True


def account_for_user(user: User) -> Account:
    """The account a signed-in user acts on: their own (owner) first, else the first team."""
    membership = (
        Membership.objects.select_related("account")
        .filter(user=user)
        .order_by("-role", "created_at")  # "owner" sorts after "member"; owners first
        .first()
    )
    if membership is None:
        # A user created outside sign-up (createsuperuser, admin) gets an account lazily.
        account = Account.objects.create(name=user.email)
        Membership.objects.create(account=account, user=user, role=Membership.Role.OWNER)
        return account
    return membership.account


# --- Time zones ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def timezone_names() -> tuple[str, ...]:
    """Every IANA zone name tzdata knows, sorted (scanning tzdata is slow: cached)."""
    return tuple(sorted(zoneinfo.available_timezones()))


def timezone_is_valid(name: str) -> bool:
    # ZoneInfo alone also accepts odd keys (e.g. "posixrules"); the IANA list is the contract.
    return name in timezone_names() and valid_timezone(name)


def account_set_timezone(*, account: Account, timezone_name: str) -> None:
    if not timezone_is_valid(timezone_name):
        raise ValueError(f"Unknown time zone {timezone_name!r}")
    account.timezone = timezone_name
    account.save(update_fields=["timezone"])


# --- Redirects -------------------------------------------------------------------------


def safe_next_url(*, request: HttpRequest, url: str | None) -> str | None:
    """`url` if it stays on this site, else None (open-redirect guard for ?next=)."""
    if url and url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return url
    return None


# --- Magic links -----------------------------------------------------------------------


def magic_link_token_create(*, user: User) -> str:
    # SESAME_ONE_TIME puts last_login in the signature: any sign-in of this user
    # (link or code) invalidates every link sent before it.
    return str(create_token(user, MAGIC_LINK_SCOPE))


def magic_link_url(*, user: User, next_url: str | None = None) -> str:
    path = reverse("magic_link", kwargs={"token": magic_link_token_create(user=user)})
    query = f"?{urlencode({'next': next_url})}" if next_url else ""
    return f"{settings.SITE_URL}{path}{query}"


def _active_user(pk: int) -> User | None:
    return User.objects.filter(pk=pk, is_active=True).first()


def magic_link_user(*, token: str) -> User | None:
    """The user a valid, unexpired, unused link is for; None otherwise. Does not consume."""
    user = parse_token(token, _active_user, MAGIC_LINK_SCOPE, settings.MAGIC_LINK_MAX_AGE)
    return user if isinstance(user, User) else None


def magic_link_consume(*, token: str) -> User | None:
    """Validate and burn the link in one step; None if invalid, expired or already used."""
    user = magic_link_user(token=token)
    if user is None:
        return None
    # Conditional UPDATE: of two concurrent clicks only one moves last_login from the
    # value the token was signed with, so only one of them signs in.
    rows = User.objects.filter(pk=user.pk)
    if user.last_login is None:
        rows = rows.filter(last_login__isnull=True)
    else:
        rows = rows.filter(last_login=user.last_login)
    claimed = rows.update(last_login=dj_timezone.now())
    return user if claimed else None


# --- The sign-in flow (allauth glue; these need the request and its session) ----------


def login_mail_send(
    *, request: HttpRequest, email: str, timezone_name: str, next_url: str | None
) -> None:
    """Send the sign-in mail (link + code) to `email`, creating the user if new.

    Raises LoginMailRateLimited. Whatever the address, the caller answers the same way,
    so the response never reveals whether an account exists.
    """
    email = normalise_email(email)
    # One call applies both rates of ACCOUNT_RATE_LIMITS["request_login_code"]: per IP
    # and per normalised email (the same counters for known and unknown addresses).
    if not ratelimit.consume(request, action="request_login_code", key=email):
        raise LoginMailRateLimited
    user, _ = user_get_or_create(email=email, timezone_name=timezone_name)
    if next_url:
        request.session[NEXT_SESSION_KEY] = next_url
    else:
        request.session.pop(NEXT_SESSION_KEY, None)
    request.session[ASKING_BROWSER_SESSION_KEY] = str(user.pk)
    # allauth generates the code, stashes the pending login in this session and sends
    # the mail through our adapter, which adds the magic link to it.
    LoginCodeVerificationProcess.initiate(request=request, user=user, email=email)


def login_mail_link(*, request: HttpRequest, email: str) -> str | None:
    """The magic link to put in a login mail being sent for `request` (None: no user)."""
    user = User.objects.filter(email=normalise_email(email), is_active=True).first()
    if user is None:
        return None
    next_url = safe_next_url(request=request, url=request.session.get(NEXT_SESSION_KEY))
    return magic_link_url(user=user, next_url=next_url)


def is_asking_browser(*, request: HttpRequest, user: User) -> bool:
    return request.session.get(ASKING_BROWSER_SESSION_KEY) == str(user.pk)


def login_with_magic_link(
    *, request: HttpRequest, token: str, next_url: str | None
) -> HttpResponse | None:
    """Consume the link and sign in through allauth; None if the link is no good."""
    user = magic_link_consume(token=token)
    if user is None:
        return None
    request.session.pop(ASKING_BROWSER_SESSION_KEY, None)
    request.session.pop(NEXT_SESSION_KEY, None)
    # allauth's perform_login runs its login stages and signals and clears the pending
    # code login stashed in this session, so the code cannot be used afterwards here.
    return perform_login(request, user, redirect_url=next_url, email=user.email)  # type: ignore[no-any-return]


# --- Deleting ----------------------------------------------------------------------------


@transaction.atomic
def account_delete(*, user: User) -> None:
    """Delete the person and every account they own, with all it holds.

    Keys, caps, usage and audit rows hang off Account with on_delete=CASCADE, so
    deleting the account removes them; team accounts the person only belongs to stay.
    """
    owned = Account.objects.filter(memberships__user=user, memberships__role=Membership.Role.OWNER)
    Account.objects.filter(pk__in=list(owned.values_list("pk", flat=True))).delete()
    user.delete()


def unused_signups_delete(*, older_than: dt.timedelta = dt.timedelta(days=7)) -> int:
    """Delete people who asked for a sign-in mail but never signed in, after a grace period.

    The sign-in form creates the user up front (so the response is the same for every
    address); this keeps addresses typed by mistake or by a bot from piling up. Staff and
    anyone added to a team are left alone. Returns how many users were deleted.
    """
    cutoff = dj_timezone.now() - older_than
    stale = (
        User.objects.filter(last_login__isnull=True, date_joined__lt=cutoff, is_staff=False)
        .exclude(memberships__role=Membership.Role.MEMBER)
        .order_by("pk")
    )
    deleted = 0
    for user in stale[:1000]:  # bounded per run; beat comes back for the rest
        account_delete(user=user)
        deleted += 1
    return deleted
