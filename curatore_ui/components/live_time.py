"""Times that tick in the browser: "3 min ago" and a running job's duration, computed client-side from
timestamps every second (``rx.moment`` with an interval), never taken from the last push.

A finished duration does not change, so it is server text; only a running one (started, not completed) ticks.
"""

from __future__ import annotations

import reflex as rx

# react-moment's diff gives whole seconds since the start; this filter writes them as the server does ("42s",
# "3m 07s", "1h 05m"), so a duration reads the same before and after it finishes.
_SECONDS_TEXT = rx.Var(
    "((s) => { s = Math.max(0, Number(s) || 0); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60),"
    " r = s % 60; return h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`; })"
)


def ticking_duration(started_iso: rx.Var[str], completed_iso: rx.Var[str], static_text: rx.Var[str],
                     **props) -> rx.Component:  # type: ignore[no-untyped-def]
    """The run's duration: ticking each second while it runs, ``static_text`` once it has ended (or not begun)."""
    return rx.cond(
        (started_iso != "") & (completed_iso == ""),
        rx.moment(diff=started_iso, unit="seconds", interval=1000, filters=[_SECONDS_TEXT], element="span",
                  data_testid="live-duration", **props),
        rx.text(static_text, as_="span", **props),
    )


def time_ago(iso: rx.Var[str], **props) -> rx.Component:  # type: ignore[no-untyped-def]
    """"a few seconds ago", "3 minutes ago": relative to the browser's clock, refreshed every 5 s."""
    return rx.cond(iso != "", rx.moment(iso, from_now=True, interval=5000, element="span", with_title=True,
                                        title_format="YYYY-MM-DD HH:mm:ss", data_testid="time-ago", **props),
                   rx.fragment())
