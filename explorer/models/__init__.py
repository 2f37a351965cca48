"""Old import paths (before the backends package); use `explorer.backends` instead.

Kept only while other branches move over; nothing inside `explorer` imports from here."""
