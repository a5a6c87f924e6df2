"""Integrations with web frameworks: `rabbittask.contrib.django` (imported only by projects that use it)."""
