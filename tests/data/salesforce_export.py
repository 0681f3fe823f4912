"""Salesforce data exports (a ZIP of one CSV per object, as Setup → Data Export produces), built in code.

``python -m tests.data.salesforce_export [PATH]`` writes the small sample (default:
``tests/data/samples/salesforce_export.zip``) for trying the CLI by hand.
"""

from __future__ import annotations

import csv
import io
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sf_id(prefix: str, n: int) -> str:
    """An 18-character Salesforce-style id: a 3-character object prefix and a counter."""
    return f"{prefix}{n:015d}"


def csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # Salesforce writes CRLF
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def accounts(n: int) -> bytes:
    return csv_bytes(["Id", "Name", "Industry", "BillingCity"],
                     [[sf_id("001", i), f"Account {i}", "Aerospace" if i % 2 else "Energy", "Reston"]
                      for i in range(1, n + 1)])


def contacts(n: int, accounts_n: int) -> bytes:
    return csv_bytes(["Id", "AccountId", "FirstName", "LastName", "Name", "Email"],
                     [[sf_id("003", i), sf_id("001", i % max(accounts_n, 1) + 1), f"Ada{i}", "Lovelace",
                       f"Ada{i} Lovelace", f"ada{i}@example.com"] for i in range(1, n + 1)])


def opportunities(n: int, accounts_n: int) -> bytes:
    return csv_bytes(["Id", "AccountId", "Name", "StageName", "Amount", "Description"],
                     [[sf_id("006", i), sf_id("001", i % max(accounts_n, 1) + 1), f"Deal {i}", "Prospecting",
                       str(1000 * i), 'Multi-line,\n"quoted" text'] for i in range(1, n + 1)])


def tasks(n: int) -> bytes:
    """Tasks have a Subject and no Name."""
    return csv_bytes(["Id", "Subject", "Status"], [[sf_id("00T", i), f"Call back #{i}", "Open"] for i in range(1, n + 1)])


def export_zip(n_accounts: int = 3, n_contacts: int = 4, n_opportunities: int = 2, n_tasks: int = 1,
               extra: dict[str, bytes] | None = None) -> bytes:
    """A Salesforce export; ``extra`` adds or replaces members (name → bytes)."""
    members = {
        "Account.csv": accounts(n_accounts),
        "Contact.csv": contacts(n_contacts, n_accounts),
        "Opportunity.csv": opportunities(n_opportunities, n_accounts),
        "Task.csv": tasks(n_tasks),
        **(extra or {}),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else HERE / "samples" / "salesforce_export.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(export_zip())
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
