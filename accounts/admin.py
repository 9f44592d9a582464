from __future__ import annotations

from django.contrib import admin

from .models import Account, Membership, User


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    list_display = ("email", "is_staff", "is_active", "date_joined", "last_login")
    search_fields = ("email",)
    list_filter = ("is_staff", "is_active")
    # No password field: nobody has one (sign-in is by magic link or code).
    fields = ("email", "is_active", "is_staff", "is_superuser", "date_joined", "last_login")
    readonly_fields = ("date_joined", "last_login")


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("name", "public_id", "timezone", "paused_at", "created_at")
    search_fields = ("name", "public_id")
    readonly_fields = ("public_id", "created_at")
    inlines = (MembershipInline,)
