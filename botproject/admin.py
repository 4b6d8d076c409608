"""The demo shop's purchases in the admin, beside the sessions."""

from __future__ import annotations

from django.contrib import admin

from .models import Purchase


@admin.register(Purchase)
class PurchaseAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("item", "user_id", "chat_id", "created_at")
    list_filter = ("item",)
    search_fields = ("item",)
