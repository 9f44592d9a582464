"""A development mail backend that prints mails readably in the terminal."""

from __future__ import annotations

from typing import Any

from django.core.mail.backends.console import EmailBackend


class ConsoleBackend(EmailBackend):
    """Print each mail's headers and plain-text body, decoded.

    The stock console backend prints the encoded MIME message, where quoted-printable
    breaks any line over 76 characters with "=": a long magic link would not work when
    copied from the `make run` terminal. Real SMTP delivery is unaffected.
    """

    def write_message(self, message: Any) -> None:
        self.stream.write(
            f"From: {message.from_email}\nTo: {', '.join(message.to)}\n"
            f"Subject: {message.subject}\n\n{message.body}\n"
        )
        self.stream.write("-" * 79 + "\n")
