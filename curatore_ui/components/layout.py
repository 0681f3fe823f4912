"""The shared page shell: a left sidebar with navigation and the signed-in user, and a bounded content area."""

import reflex as rx

from curatore_ui.state.session import SessionState


def _nav_link(label: str | rx.Var[str], href: str | rx.Var[str], icon: str) -> rx.Component:
    return rx.link(
        rx.hstack(rx.icon(icon, size=16), rx.text(label, size="2", weight="medium"), align="center", spacing="2"),
        href=href,
        underline="none",
        color_scheme="gray",
        high_contrast=True,
        padding_x="0.75rem",
        padding_y="0.5rem",
        border_radius="var(--radius-2)",
        width="100%",
        _hover={"background": "var(--gray-a3)"},
    )


# ---- issue 15: account pages (kept apart from the rest of the shell, for easy merges) ----
def _account_links() -> rx.Component:
    """Members and Audit of each organization the user administers; the whole audit log for system admins;
    their own account for everyone."""
    admin_of = SessionState.orgs.to(list[dict[str, str]])
    return rx.vstack(
        rx.separator(),
        rx.foreach(admin_of, lambda o: rx.cond(
            (o["role"] == "admin") | SessionState.is_system_admin,
            rx.vstack(_nav_link(o["name"] + " members", "/orgs/" + o["slug"] + "/members", "users"),
                      _nav_link(o["name"] + " audit", "/orgs/" + o["slug"] + "/audit", "scroll-text"),
                      spacing="1", width="100%"))),
        rx.cond(SessionState.is_system_admin, _nav_link("Audit log", "/system/audit", "scroll-text")),
        _nav_link("Account", "/account", "user-round"),
        spacing="1", width="100%")
# ---- end issue 15 ----


def _sidebar() -> rx.Component:
    return rx.vstack(
        rx.link(
            rx.heading("Curatore", size="5"),
            href="/",
            underline="none",
            high_contrast=True,
            padding_x="0.75rem",
        ),
        rx.separator(),
        rx.vstack(
            rx.cond(SessionState.is_system_admin, _nav_link("All jobs", "/system/jobs", "layers")),
            rx.cond(SessionState.may_administer_queues, _nav_link("Queues", "/system/queues", "gauge")),
            rx.foreach(SessionState.orgs, lambda o: _nav_link(o["name"], "/orgs/" + o["slug"] + "/jobs",
                                                              "building-2")),
            _account_links(),  # issue 15: members, audit, account
            spacing="1",
            width="100%",
        ),
        rx.spacer(),
        rx.cond(SessionState.email != "", rx.vstack(
            rx.separator(),
            rx.text(SessionState.email, size="1", color_scheme="gray", data_testid="signed-in-as"),
            rx.button(rx.icon("log-out", size=14), "Sign out", variant="ghost", size="1", color_scheme="gray",
                      on_click=SessionState.log_out, data_testid="logout"),
            spacing="2", width="100%", padding_x="0.75rem")),
        as_="nav",
        spacing="4",
        width=rx.breakpoints(initial="11rem", md="14rem"),  # narrower below 1024 px
        height="100vh",
        position="sticky",
        top="0",
        padding="1rem",
        flex_shrink="0",
        border_right="1px solid var(--gray-a5)",
        background="var(--gray-a2)",
    )


def layout(title: str, *children: rx.Component, actions: rx.Component | None = None) -> rx.Component:
    """Wrap a page's content in the shared shell, under a heading with ``title``."""
    return rx.hstack(
        _sidebar(),
        rx.box(
            rx.vstack(
                *([rx.hstack(rx.heading(title, size="7", as_="h1"), rx.spacer(), actions or rx.fragment(),
                             align="center", width="100%")] if title else []),
                *children,
                spacing="4",
                width="100%",
            ),
            as_="main",
            width="100%",
            min_width="0",  # wide tables scroll inside the page instead of widening it
            max_width="90rem",
            padding=rx.breakpoints(initial="1rem", md="2rem"),
        ),
        spacing="0",
        align="start",
        width="100%",
    )
