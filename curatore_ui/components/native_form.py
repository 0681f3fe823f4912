"""A plain HTML ``<form>`` that the browser submits itself (a full page load to ``action``).

Reflex's ``rx.form`` and ``rx.el.form`` always cancel the browser's submit to send a state event instead; the
sign-in and sign-out forms must reach the server as real HTTP posts, so that its answer can set or clear the
HttpOnly session cookie."""

from __future__ import annotations

import reflex as rx
from reflex_components_core.el.elements.base import BaseHTML


class NativeForm(BaseHTML):
    """``<form action=... method="post">`` with no Reflex submit handler."""

    tag = "form"

    action: rx.Var[str]
    method: rx.Var[str]


native_form = NativeForm.create


def post_button(label: rx.Component | str, action: str, **props: object) -> rx.Component:
    """A button that posts an empty form to ``action`` (sign-out)."""
    return native_form(rx.button(label, type="submit", **props), action=action, method="post")
