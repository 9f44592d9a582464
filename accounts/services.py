"""Account workflows: the public surface of the accounts app."""

from __future__ import annotations

from django.db import transaction

from .models import Account, Membership, User, normalise_email, valid_timezone


@transaction.atomic
def user_get_or_create(*, email: str, timezone_name: str = "UTC") -> tuple[User, bool]:
    """Return the user for `email`, creating them and their personal account if new."""
    email = normalise_email(email)
    user = User.objects.filter(email=email).first()
    if user is not None:
        return user, False
    user = User.objects.create_user(email=email)
    tz = timezone_name if valid_timezone(timezone_name) else "UTC"
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
