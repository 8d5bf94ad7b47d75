"""Turning legacy files into documents: listing and probing, planning, writing, scanning."""
